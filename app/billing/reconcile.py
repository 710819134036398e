"""Reconciliation: does Stripe hold what our ledger says was sent?

For each customer linked to Stripe and each day of the window, what the
``usage_reports`` ledger says was sent (the quantities of its ``sent`` reports
of that day; each meter event is dated on its day) is compared with Stripe's
meter event summary for that customer and day. A difference is recorded (one
row per customer and day) and stays open until a later run finds the two equal;
``flask billing status`` fails while one is open.

Stripe aggregates meter events asynchronously, so the window ends the day before
yesterday's report ran (``RECONCILE_HOUR_UTC`` is hours after the report) and
reaches ``RECONCILE_DAYS`` back; one call per customer covers the window.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import Decimal

from sqlalchemy import func, select

from app.billing.gateway import StripeGateway
from app.billing.models import ReconciliationDifference, ReportStatus, UsageReport
from app.customers.models import BillingCustomer
from app.extensions import db
from app.progress import Progress, unwatched


@dataclass(frozen=True)
class Reconciled:
    customers: int
    days: int
    differences: int  # open after this run
    resolved: int  # closed by this run


def sent_by_day(first: date, last: date) -> dict[int, dict[date, Decimal]]:
    """Per customer and day, the quantity our ledger says Stripe was sent."""
    rows = db.session.execute(
        select(UsageReport.customer_id, UsageReport.day, func.sum(UsageReport.quantity))
        .where(UsageReport.status == ReportStatus.SENT, UsageReport.day.between(first, last))
        .group_by(UsageReport.customer_id, UsageReport.day)
    )
    sent: dict[int, dict[date, Decimal]] = defaultdict(dict)
    for customer_id, day, quantity in rows:
        sent[customer_id][day] = Decimal(quantity)
    return sent


def _record(
    known: ReconciliationDifference | None,
    customer_id: int,
    day: date,
    sent: Decimal,
    held: Decimal,
    now: datetime,
) -> tuple[bool, bool]:
    """Open (or refresh) the difference, or close it when the two agree.

    Returns (open now, closed by this check)."""
    if sent == held:
        if known is not None and known.resolved_at is None:
            known.resolved_at, known.checked_at, known.in_stripe = now, now, held
            return False, True
        return False, False
    if known is None:
        known = ReconciliationDifference(customer_id=customer_id, day=day, found_at=now)
        db.session.add(known)
    known.sent, known.in_stripe, known.checked_at, known.resolved_at = sent, held, now, None
    return True, False


def reconcile(
    gateway: StripeGateway,
    event_name: str,
    first: date,
    last: date,
    now: datetime,
    progress: Progress = unwatched,
) -> Reconciled:
    """Compare every linked customer's days from ``first`` to ``last`` with Stripe."""
    meter = gateway.meter_id(event_name)
    sent = sent_by_day(first, last)
    known = {
        (row.customer_id, row.day): row
        for row in db.session.scalars(
            select(ReconciliationDifference).where(
                ReconciliationDifference.day.between(first, last)
            )
        )
    }
    customers = db.session.execute(
        select(BillingCustomer.id, BillingCustomer.stripe_customer_id)
        .where(BillingCustomer.stripe_customer_id.is_not(None))
        .order_by(BillingCustomer.id)
    ).all()
    days = [first + timedelta(days=n) for n in range((last - first).days + 1)]
    open_count = resolved = 0
    for done, (customer_id, stripe_id) in enumerate(customers, start=1):
        held = gateway.daily_usage(meter, stripe_id or "", first, last)  # never None here
        ours = sent.get(customer_id, {})
        for day in days:
            is_open, closed = _record(
                known.get((customer_id, day)),
                customer_id,
                day,
                ours.get(day, Decimal(0)),
                held.get(day, Decimal(0)),
                now,
            )
            open_count += is_open
            resolved += closed
        db.session.commit()
        progress(done, len(customers))
    return Reconciled(len(customers), len(days), open_count, resolved)


def open_difference_count() -> int:
    where = ReconciliationDifference.resolved_at.is_(None)
    return db.session.scalar(select(func.count()).where(where)) or 0


def open_differences(limit: int = 20) -> tuple[int, list[ReconciliationDifference]]:
    """How many differences are open, and the latest of them."""
    latest = db.session.scalars(
        select(ReconciliationDifference)
        .where(ReconciliationDifference.resolved_at.is_(None))
        .order_by(ReconciliationDifference.day.desc(), ReconciliationDifference.customer_id)
        .limit(limit)
    )
    return open_difference_count(), list(latest)
