"""What customers owe in all, up to a day: what the daily Stripe report sends (in
``BILLING_QUANTITY=cost``), from every billing period since their first usage.

A period closed long enough ago that no event can still arrive for it
(``MAX_EVENT_AGE_DAYS``) is priced once, topped up to its plan's minimum and
frozen (``period_charges``); the newer ones are priced each time from the
rollups, summed per customer, segment and model in a query per window (a
plan's units add up whatever their order, so the totals are those of pricing
day by day). A report thus costs a few queries for all customers and a couple
of periods' arithmetic for each, whatever the history; and a correction to a
plan or a price of a recent period changes what is owed, and so what the next
report sends (or, below what was sent, the credit an operator must give).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from datetime import date, timedelta
from decimal import Decimal

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from app.customers.models import ApiKey, BillingCustomer
from app.dialect import in_ids
from app.extensions import db
from app.ingest.models import UsageDaily
from app.periods import Period, billing_periods
from app.plans.charges import ModelDay, exact_sum
from app.plans.models import PeriodCharge, PricePlan
from app.plans.services import (
    MODEL_DAY_SUMS,
    Segment,
    assignments_of,
    default_plan,
    model_day,
    opening_day,
    plan_terms,
    price_period,
    segments_of,
)

# First and last day, inclusive, and whether the window opens the customer's first
# period (then it also holds every day before: app.plans.services.opening_day).
Window = tuple[date, date, bool]


def _first_usage(customer_ids: Sequence[int]) -> dict[int, date]:
    rows = db.session.execute(
        select(ApiKey.customer_id, func.min(UsageDaily.day))
        .join(ApiKey, ApiKey.key_hash == UsageDaily.api_key_hash)
        .where(in_ids(ApiKey.customer_id, list(customer_ids)))
        .group_by(ApiKey.customer_id)
    ).all()
    return dict(rows)


def _frozen(customer_ids: Sequence[int]) -> dict[tuple[int, date], Decimal]:
    rows = db.session.execute(
        select(PeriodCharge.customer_id, PeriodCharge.period_start, PeriodCharge.total).where(
            in_ids(PeriodCharge.customer_id, list(customer_ids))
        )
    ).all()
    return {(customer_id, start): Decimal(total) for customer_id, start, total in rows}


def _summed(windows: dict[Window, list[int]]) -> dict[tuple[int, Window], list[ModelDay]]:
    """Each customer's usage per window, per model, dated the window's first day."""
    found: dict[tuple[int, Window], list[ModelDay]] = defaultdict(list)
    for (first, last, opening), customer_ids in windows.items():
        days = UsageDaily.day <= last if opening else UsageDaily.day.between(first, last)
        rows = db.session.execute(
            select(ApiKey.customer_id, UsageDaily.provider, UsageDaily.model, *MODEL_DAY_SUMS)
            .join(ApiKey, ApiKey.key_hash == UsageDaily.api_key_hash)
            .where(in_ids(ApiKey.customer_id, customer_ids), days)
            .group_by(ApiKey.customer_id, UsageDaily.provider, UsageDaily.model)
        ).all()
        for row in rows:
            found[(row[0], (first, last, opening))].append(model_day(first, *row[1:]))
    return found


def owed_through(
    customers: Sequence[BillingCustomer], day: date, max_event_age_days: int
) -> dict[int, Decimal]:
    """Everything each customer owes for its usage up to the end of ``day``, in USD."""
    ids = [c.id for c in customers]
    frozen = _frozen(ids)
    # Everything before a customer's last frozen period is frozen too: only customers
    # with none need their first usage looked up (a scan of their rollups).
    resume: dict[int, date] = {}
    for customer_id, period_start in frozen:
        resume[customer_id] = max(resume.get(customer_id, period_start), period_start)
    first_usage = _first_usage([i for i in ids if i not in resume])
    first_usage.update(resume)
    assignments, default = assignments_of(ids), default_plan()
    jobs: list[tuple[BillingCustomer, Period, list[Segment], list[Window]]] = []
    windows: dict[Window, list[int]] = defaultdict(list)
    totals: dict[int, list[Decimal]] = {c.id: [] for c in customers}
    for (customer_id, _), total in frozen.items():
        totals[customer_id].append(total)
    # Customers on the same assignments share their periods' segments: built once.
    cut: dict[tuple[tuple[tuple[date, PricePlan], ...], Period], list[Segment]] = {}
    for customer in customers:
        first = first_usage.get(customer.id)
        if first is None:
            continue
        opening = opening_day(customer)
        first = max(first, opening)  # what is dated before is the first period's
        if first > day:
            continue
        assigned = tuple(assignments.get(customer.id, ()))
        for period in billing_periods(first, day, customer.created_at.day):
            if (customer.id, period.start) in frozen:
                continue  # counted above
            last = min(day, period.end - timedelta(days=1))
            if (assigned, period) not in cut:
                cut[(assigned, period)] = segments_of(list(assigned), default, period)
            parts = cut[(assigned, period)]
            spans = [
                (s.start, min(last, s.end - timedelta(days=1)), s.start == opening) for s in parts
            ]
            spans = [(a, b, o) for a, b, o in spans if a <= b]
            for span in spans:
                windows[span].append(customer.id)
            jobs.append((customer, period, parts, spans))
    usage = _summed(windows)
    settled_before = day - timedelta(days=max_event_age_days)
    for customer, period, parts, spans in jobs:
        summed = [u for span in spans for u in usage.get((customer.id, span), [])]
        total = price_period(customer.id, period, day, summed, parts, lines=False).total
        if period.end <= day:  # closed: the whole period, with its plan's minimum
            total = max(total, plan_terms(parts[-1].plan).minimum)
            if period.end <= settled_before:
                _freeze(customer.id, period, total)
        totals[customer.id].append(total)
    return {customer_id: exact_sum(values) for customer_id, values in totals.items()}


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
