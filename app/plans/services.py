"""Plans over time: versions, which customer is on which from when, and what a customer
owes for its billing period so far (the upcoming invoice)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import BigInteger, cast, func, select
from sqlalchemy.exc import IntegrityError

from app.customers.models import ApiKey, BillingCustomer
from app.dialect import in_ids
from app.errors import NotFound, ValidationError
from app.extensions import db
from app.ingest.models import UsageDaily
from app.periods import Period, billing_periods, period_at
from app.plans.charges import (
    ZERO,
    Charge,
    ModelDay,
    Terms,
    charge_segment,
    exact_sum,
    merged,
    units_of,
)
from app.plans.models import DEFAULT_PLAN, PlanAssignment, PricePlan
from app.plans.terms import PlanTerms, terms_of

AT_COST = Terms()  # the standard plan's terms: what a call cost us, unchanged


def create_version(code: str, name: str, terms: PlanTerms) -> PricePlan:
    """A new version of plan ``code`` (its first, if new); versions are never edited.
    The caller commits (as with ``assign_plan``), so both may share a transaction."""
    latest = db.session.scalar(select(func.max(PricePlan.version)).where(PricePlan.code == code))
    plan = PricePlan(
        code=code,
        version=(latest or 0) + 1,
        name=name,
        terms=terms.checked().model_dump(mode="json"),
    )
    db.session.add(plan)
    db.session.flush()
    return plan


def plan_version(code: str, version: int | None = None) -> PricePlan:
    if code == DEFAULT_PLAN and version is None:
        return default_plan()
    query = select(PricePlan).where(PricePlan.code == code)
    if version is not None:
        query = query.where(PricePlan.version == version)
    plan = db.session.scalar(query.order_by(PricePlan.version.desc()).limit(1))
    if plan is None:
        raise NotFound(f"no plan {code}" + (f" version {version}" if version else ""), field="code")
    return plan


def _latest(code: str) -> PricePlan | None:
    return db.session.scalar(
        select(PricePlan).where(PricePlan.code == code).order_by(PricePlan.version.desc()).limit(1)
    )


def default_plan() -> PricePlan:
    """The standard plan (provider cost): seeded by migration 0007, made again if gone."""
    plan = _latest(DEFAULT_PLAN)
    if plan is not None:
        return plan
    try:
        plan = create_version(DEFAULT_PLAN, "Standard: provider cost", PlanTerms())
        db.session.commit()  # a seed, not the caller's change: it stands on its own
        return plan
    except IntegrityError:  # made meanwhile by a concurrent request
        db.session.rollback()
        made = _latest(DEFAULT_PLAN)
        assert made is not None
        return made


def all_plans() -> list[PricePlan]:
    return list(db.session.scalars(select(PricePlan).order_by(PricePlan.code, PricePlan.version)))


def assign_plan(customer_id: int, plan: PricePlan, effective_from: date) -> PlanAssignment:
    """Put a customer on ``plan`` from midnight UTC of ``effective_from`` (a change in the
    middle of a period splits it there); a second assignment for that day replaces it."""
    if db.session.get(BillingCustomer, customer_id) is None:
        raise NotFound(f"no customer {customer_id}", field="customer_id")
    assignment = db.session.scalar(
        select(PlanAssignment).where(
            PlanAssignment.customer_id == customer_id,
            PlanAssignment.effective_from == effective_from,
        )
    ) or PlanAssignment(customer_id=customer_id, effective_from=effective_from)
    assignment.plan_id = plan.id
    db.session.add(assignment)
    db.session.flush()
    return assignment


@dataclass(frozen=True)
class Segment:
    """Days [start, end) of a period, priced by one plan version."""

    plan: PricePlan
    start: date
    end: date


Assignments = list[tuple[date, PricePlan]]


def assignments_of(customer_ids: Iterable[int]) -> dict[int, Assignments]:
    """Each customer's plan assignments, oldest first, in one query."""
    found: dict[int, Assignments] = {}
    rows = db.session.execute(
        select(PlanAssignment.customer_id, PlanAssignment.effective_from, PlanAssignment.plan_id)
        .where(in_ids(PlanAssignment.customer_id, list(customer_ids)))
        .order_by(PlanAssignment.effective_from)
    ).all()
    # The few versions once each, not one entity per assignment row.
    used = {plan_id for _, _, plan_id in rows}
    plans = {p.id: p for p in db.session.scalars(select(PricePlan).where(PricePlan.id.in_(used)))}
    for customer_id, effective, plan_id in rows:
        found.setdefault(customer_id, []).append((effective, plans[plan_id]))
    return found


def segments_of(assignments: Assignments, default: PricePlan, period: Period) -> list[Segment]:
    """The plan versions in force over ``period``, in order."""
    current = default
    changes: Assignments = []
    for effective, plan in assignments:
        if effective <= period.start:
            current = plan
        elif effective < period.end:
            changes.append((effective, plan))
    cuts = [period.start, *(day for day, _ in changes), period.end]
    plans = [current, *(plan for _, plan in changes)]
    return [
        Segment(plan, cuts[i], cuts[i + 1]) for i, plan in enumerate(plans) if cuts[i] < cuts[i + 1]
    ]


def segments(customer_id: int, period: Period) -> list[Segment]:
    return segments_of(assignments_of([customer_id]).get(customer_id, []), default_plan(), period)


# A model's usage summed from the rollup, as ``model_day`` reads it after provider and
# model. Token sums come back as integers: PostgreSQL's sum of bigint is numeric,
# which the driver would turn into a Decimal for each row, only for ``int`` to undo it.
MODEL_DAY_SUMS = (
    cast(func.sum(UsageDaily.tokens_input), BigInteger),
    cast(func.sum(UsageDaily.tokens_output), BigInteger),
    cast(func.sum(UsageDaily.tokens_cache_read), BigInteger),
    cast(func.sum(UsageDaily.tokens_cache_write), BigInteger),
    func.sum(UsageDaily.cost_total),
)


def model_day(
    day: date,
    provider: str,
    model: str,
    tokens_input: Any,
    tokens_output: Any,
    tokens_cache_read: Any,
    tokens_cache_write: Any,
    cost: Any,
) -> ModelDay:
    """A row of ``MODEL_DAY_SUMS`` (after its day, provider and model) as a ModelDay."""
    return ModelDay(
        day,
        provider,
        model,
        int(tokens_input),
        int(tokens_output),
        int(tokens_cache_read),
        int(tokens_cache_write),
        Decimal(cost),
    )


def opening_day(customer: BillingCustomer) -> date:
    """The first day of the customer's first billing period (the one it was created in).

    ModelDay dated earlier (a key metered before it was onboarded, events dated back) is
    the first period's: charged there, as of this day. So no period of the customer
    starts before it, and the upcoming invoice, the usage endpoint's charges and the
    daily report count that usage once, in the same place."""
    return period_at("billing_period", customer.created_at, customer.created_at.day).start


def customer_periods(customer: BillingCustomer, first: date, last: date) -> tuple[Period, ...]:
    """The customer's billing periods touching days ``first`` to ``last``, none before
    its first."""
    opening = opening_day(customer)
    if last < opening:
        return ()
    return billing_periods(max(first, opening), last, customer.created_at.day)


def usage_of(customer: BillingCustomer, first: date, last: date) -> list[ModelDay]:
    """The customer's usage per day and model, all its keys together; from its opening
    day on, with everything dated before it counted on that day."""
    opening = opening_day(customer)
    keys = select(ApiKey.key_hash).where(ApiKey.customer_id == customer.id)
    days = UsageDaily.day <= last if first <= opening else UsageDaily.day.between(first, last)
    rows = db.session.execute(
        select(UsageDaily.day, UsageDaily.provider, UsageDaily.model, *MODEL_DAY_SUMS)
        .where(UsageDaily.api_key_hash.in_(keys), days)
        .group_by(UsageDaily.day, UsageDaily.provider, UsageDaily.model)
    ).all()
    found = [model_day(max(row[0], opening), *row[1:]) for row in rows]
    return found if first > opening else _merged_days(found)


def _merged_days(usages: list[ModelDay]) -> list[ModelDay]:
    """One usage per day and model: back-dated days folded into the opening day."""
    merged: dict[tuple[date, str, str], ModelDay] = {}
    for usage in usages:
        key = (usage.day, usage.provider, usage.model)
        known = merged.get(key)
        merged[key] = usage if known is None else known.plus(usage)
    return list(merged.values())


@dataclass(frozen=True)
class Invoice:
    """A period's charge so far, segment by segment (a plan change splits it)."""

    customer_id: int
    period: Period
    through: date  # the last day counted
    parts: list[tuple[PricePlan, Charge]]

    @property
    def total(self) -> Decimal:
        return exact_sum(charge.total for _, charge in self.parts)

    @property
    def cost(self) -> Decimal:
        return exact_sum(charge.cost for _, charge in self.parts)

    @property
    def included_used(self) -> Decimal:
        return exact_sum(charge.included_used for _, charge in self.parts)


_TERMS: dict[tuple[int, datetime], Terms] = {}


def plan_terms(plan: PricePlan) -> Terms:
    """A version's terms, converted once per process: a version is never edited (the
    key holds its creation time too, should a database be restored over the process)."""
    key = (plan.id, plan.created_at)
    if key not in _TERMS:
        _TERMS[key] = terms_of(plan.terms)
    return _TERMS[key]


def price_period(
    customer_id: int,
    period: Period,
    through: date,
    usage: list[ModelDay],
    parts: list[Segment],
    lines: bool = True,
) -> Invoice:
    """Price ``period`` through day ``through`` from its usage, each segment by its plan.

    ``usage`` is by day, or summed per segment (dated the segment's first day): the
    totals are the same, since a plan's units add up whatever their order. Without
    ``lines``, only the totals are meant to be read."""
    last = min(through, period.end - timedelta(days=1))
    priced = []
    for segment in parts:
        before = [u for u in usage if u.day < segment.start]
        inside = [u for u in usage if segment.start <= u.day < segment.end and u.day <= last]
        terms = plan_terms(segment.plan)
        # Volume prices every unit at the tier the whole period (so far) reaches.
        period_units = (
            exact_sum(units_of(terms, u) for u in usage if u.day <= last)
            if terms.mode == "volume"
            else None
        )
        charge = charge_segment(terms, before, inside, period_units)
        # An invoice shows a line per model and tier; a total needs no merging.
        priced.append((segment.plan, merged(charge) if lines else charge))
    return Invoice(customer_id, period, last, priced)


def owed(customer: BillingCustomer, period: Period, through: date) -> Invoice:
    """What ``customer`` owes for ``period`` up to and including day ``through``, by day."""
    last = min(through, period.end - timedelta(days=1))
    usage = usage_of(customer, period.start, last) if last >= period.start else []
    return price_period(customer.id, period, through, usage, segments(customer.id, period))


def owed_between(customer: BillingCustomer, first: date, last: date) -> Decimal | None:
    """What the customer's charge under its plans grew by over the days ``first`` to
    ``last``: in each billing period they touch, what is owed through ``last`` less what
    was owed before ``first`` (as ``daily_charges`` adds it up; a minimum, charged when a
    period closes, falls on no day). None when every plan in force charges provider
    cost, which the rollup's cost already is."""
    assigned = assignments_of([customer.id]).get(customer.id, [])
    default = default_plan()
    cut = {
        period: segments_of(assigned, default, period)
        for period in customer_periods(customer, first, last)
    }
    if all(plan_terms(s.plan) == AT_COST for parts in cut.values() for s in parts):
        return None
    grown = []
    for period, parts in cut.items():
        through = min(last, period.end - timedelta(days=1))
        usage = usage_of(customer, period.start, through)
        grown.append(price_period(customer.id, period, through, usage, parts, lines=False).total)
        if first > period.start:
            before = first - timedelta(days=1)
            earlier = [u for u in usage if u.day <= before]
            owed = price_period(customer.id, period, before, earlier, parts, lines=False).total
            grown.append(-owed)
    return exact_sum(grown)


def daily_charges(customer: BillingCustomer, first: date, last: date) -> dict[date, Decimal]:
    """What each day from ``first`` to ``last`` added to the customer's charge under its
    plans: what is owed through the day less what was owed through the day before, in
    its billing period (a minimum is charged when the period closes, on no day)."""
    charges: dict[date, Decimal] = {}
    keys = select(ApiKey.key_hash).where(ApiKey.customer_id == customer.id)
    used_first, used_last = db.session.execute(
        select(func.min(UsageDaily.day), func.max(UsageDaily.day)).where(
            UsageDaily.api_key_hash.in_(keys), UsageDaily.day.between(first, last)
        )
    ).one()
    if used_first is None:  # no usage in the range: every day added nothing
        return charges
    opening = opening_day(customer)
    if used_last < opening <= last:  # usage dated before the opening day adds on that day
        used_last = opening
    first, last = used_first, used_last  # the days that can add anything
    for period in customer_periods(customer, first, last):
        through = min(last, period.end - timedelta(days=1))
        usage = usage_of(customer, period.start, through)
        parts = segments(customer.id, period)
        used_on = {u.day for u in usage}
        owed_before, day = ZERO, period.start
        while day <= through:
            added = ZERO
            if day in used_on:  # a day without usage adds nothing
                so_far = [u for u in usage if u.day <= day]
                owed_now = price_period(customer.id, period, day, so_far, parts, lines=False).total
                added, owed_before = owed_now - owed_before, owed_now
            if day >= first:
                charges[day] = added
            day += timedelta(days=1)
    return charges


def upcoming_invoice(customer: BillingCustomer, now: datetime) -> Invoice:
    """The customer's current billing period so far."""
    period = period_at("billing_period", now, customer.created_at.day)
    return owed(customer, period, now.date())


def check_effective(day: date, today: date) -> date:
    if day < today - timedelta(days=366):
        raise ValidationError("effective_from is more than a year back", field="effective_from")
    return day
