"""What a customer owes in all, up to a day: what the daily Stripe report sends (in
``BILLING_QUANTITY=cost``), from every billing period since its first usage.

A period closed long enough ago that no event can still arrive for it
(``MAX_EVENT_AGE_DAYS``) is priced once, topped up to its plan's minimum and
frozen (``period_charges``); the newer ones are priced from the rollups each
time. So a report costs a couple of periods' pricing per customer, whatever the
history, and a correction to a plan or a price of a recent period changes what
is owed, and so what the next report sends (or, below what was sent, the
credit an operator must give).
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from app.customers.models import ApiKey, BillingCustomer
from app.extensions import db
from app.ingest.models import UsageDaily
from app.periods import Period, period_at
from app.plans.charges import exact_sum
from app.plans.models import PeriodCharge
from app.plans.services import owed, segments
from app.plans.terms import terms_of


def _first_usage(customer_id: int) -> date | None:
    keys = select(ApiKey.key_hash).where(ApiKey.customer_id == customer_id)
    return db.session.scalar(
        select(func.min(UsageDaily.day)).where(UsageDaily.api_key_hash.in_(keys))
    )


def periods_through(customer: BillingCustomer, day: date) -> list[Period]:
    """The customer's billing periods from its first usage to the one holding ``day``."""
    first = _first_usage(customer.id)
    if first is None or first > day:
        return []
    anchor = customer.created_at.day
    at = datetime.combine(first, time(), tzinfo=UTC)
    periods = [period_at("billing_period", at, anchor)]
    while periods[-1].end <= day:
        periods.append(
            period_at(
                "billing_period", datetime.combine(periods[-1].end, time(), tzinfo=UTC), anchor
            )
        )
    return periods


def closed_charge(customer: BillingCustomer, period: Period) -> Decimal:
    """A whole period's charge, with the minimum of the plan in force at its end."""
    invoice = owed(customer, period, period.end - timedelta(days=1))
    minimum = terms_of(segments(customer.id, period)[-1].plan.terms).minimum
    return max(invoice.total, minimum)


def owed_through(customer: BillingCustomer, day: date, max_event_age_days: int) -> Decimal:
    """Everything the customer owes for its usage up to the end of ``day``, in USD."""
    frozen = {
        row.period_start: Decimal(row.total)
        for row in db.session.scalars(
            select(PeriodCharge).where(PeriodCharge.customer_id == customer.id)
        )
    }
    settled_before = day - timedelta(days=max_event_age_days)
    totals = []
    for period in periods_through(customer, day):
        if period.start in frozen:
            totals.append(frozen[period.start])
        elif period.end <= day:  # closed: the whole period, with its minimum
            total = closed_charge(customer, period)
            totals.append(total)
            if period.end <= settled_before:
                _freeze(customer.id, period, total)
        else:  # the current period, through ``day``: no minimum yet
            totals.append(owed(customer, period, day).total)
    return exact_sum(totals)


def _freeze(customer_id: int, period: Period, total: Decimal) -> None:
    try:
        with db.session.begin_nested():
            db.session.add(
                PeriodCharge(
                    customer_id=customer_id,
                    period_start=period.start,
                    period_end=period.end,
                    total=format(total, "f"),
                )
            )
    except IntegrityError:  # frozen meanwhile by a concurrent report
        pass
