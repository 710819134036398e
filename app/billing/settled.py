"""How far each customer's usage is settled with Stripe: what retention may delete.

A customer's events may go up to the last day the report job reached, but never
from the first day of a report of theirs that is not settled (pending, failed,
or waiting for manual billing). Events of a key that no Stripe-linked customer
holds were never reported, and stay.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from datetime import time as clock

from sqlalchemy import func, select

from app.billing.models import ReportStatus, UsageReport
from app.customers.models import ApiKey, BillingCustomer
from app.extensions import db

UNSETTLED = (ReportStatus.PENDING, ReportStatus.FAILED, ReportStatus.NEEDS_MANUAL)


def cleanup_cutoff(
    now: datetime, retention_days: int, last_reported_day: date | None
) -> datetime | None:
    """Events strictly before this instant may go; None when nothing may."""
    if last_reported_day is None:
        return None
    reported_until = datetime.combine(last_reported_day + timedelta(days=1), clock(), tzinfo=UTC)
    return min(now - timedelta(days=retention_days), reported_until)


def customer_cutoffs(
    now: datetime, retention_days: int, last_reported_day: date | None
) -> dict[datetime, list[str]]:
    """Each cutoff instant → the API key hashes whose events before it may go."""
    unsettled = (
        select(UsageReport.customer_id, func.min(UsageReport.day).label("day"))
        .where(UsageReport.status.in_(UNSETTLED))
        .group_by(UsageReport.customer_id)
        .subquery()
    )
    keys = db.session.execute(
        select(ApiKey.key_hash, unsettled.c.day)
        .join(BillingCustomer, BillingCustomer.id == ApiKey.customer_id)
        .outerjoin(unsettled, unsettled.c.customer_id == BillingCustomer.id)
        .where(BillingCustomer.stripe_customer_id.is_not(None))
    ).all()
    cutoffs: dict[datetime, list[str]] = {}
    for key_hash, first_unsettled in keys:
        reported = last_reported_day
        if first_unsettled is not None and reported is not None:
            reported = min(reported, first_unsettled - timedelta(days=1))
        cutoff = cleanup_cutoff(now, retention_days, reported)
        if cutoff is not None:
            cutoffs.setdefault(cutoff, []).append(key_hash)
    return cutoffs
