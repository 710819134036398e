"""The daily usage report: what each customer owes Stripe, sent exactly once.

Stripe takes whole numbers, so we bill the *cumulative* usage: for a customer
and day D, ``target = floor(all usage up to the end of D, in units)`` and we
send ``target − units already owed`` (sent or pending). Fractions therefore
carry to the next day without being dropped or rounded twice; usage that
arrived late for an already reported day is in the next run's difference (the
correction); and re-running any day finds nothing left to send.

Each meter event is written to ``usage_reports`` as ``pending`` *before* the
Stripe call, with a fixed identifier that is also the idempotency key. A crash
after Stripe answered but before we recorded it leaves a pending row, and the
next run re-sends it unchanged: Stripe answers from its idempotency cache and
bills nothing twice. Stripe only keeps identifiers ~24 hours, so the ledger is
what makes reports exactly-once across days.
"""

from __future__ import annotations

import logging
import secrets
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from decimal import ROUND_FLOOR, ROUND_HALF_EVEN, Decimal, localcontext
from typing import Any

from sqlalchemy import Date, Select, and_, func, insert, literal, select, update

from app.billing.gateway import StripeGateway
from app.billing.models import FrozenUsage, ReportStatus, UsageReport
from app.columns import MONEY_SCALE, utcnow
from app.config import Settings
from app.credits.ledger import billable_through, prepaid
from app.customers.models import ApiKey, BillingCustomer
from app.errors import BillingRejected, BillingUnavailable, Conflict, NotFound
from app.extensions import db
from app.ingest.models import UsageDaily
from app.plans.charges import PRECISION
from app.plans.owed import owed_through
from app.progress import Progress, unwatched

log = logging.getLogger("usage_billing.report")
MODE = "meter_events"
STRIPE_MAX_EVENT_AGE = timedelta(days=35)
# Stripe dedupes a meter event's identifier (and an idempotency key) for ~24 hours.
STRIPE_DEDUPE_WINDOW = timedelta(hours=23)
_STORED = Decimal(1).scaleb(-MONEY_SCALE)


@dataclass
class ReportSummary:
    day: date
    customers: int = 0
    sent: int = 0
    nothing_to_send: int = 0
    needs_manual: int = 0
    failed: list[str] = field(default_factory=list)

    def as_counts(self) -> dict[str, int]:
        return {
            "customers": self.customers,
            "sent": self.sent,
            "nothing_to_send": self.nothing_to_send,
            "needs_manual": self.needs_manual,
            "failed": len(self.failed),
        }


def _units(settings: Settings) -> tuple[str, Decimal]:
    if settings.billing_quantity == "tokens":
        return "tokens", Decimal(1)
    return f"usd/{settings.billing_cost_unit}", settings.billing_cost_unit


def cumulative_usage(
    settings: Settings, day: date, today: date | None = None
) -> dict[int, Decimal]:
    """Every customer's usage up to the end of ``day``, all its keys together, in report
    units (exact, not rounded).

    The days no event can reach any more (older than ``MAX_EVENT_AGE_DAYS``, with a
    day's margin) come from ``frozen_usage``, first brought up to the latest such
    day; only the days after it are summed from the rollup. So the report reads
    about ``MAX_EVENT_AGE_DAYS`` days of rows whatever the length of the history.
    """
    today = today or utcnow().date()
    closed: date | None = min(day, today - timedelta(days=settings.max_event_age_days + 2))
    tokens = settings.billing_quantity == "tokens"
    totals: dict[int, Decimal] = defaultdict(Decimal)
    frozen_through = db.session.scalar(select(func.max(FrozenUsage.through_day)))
    if frozen_through is not None and closed is not None and frozen_through > closed:
        closed = None  # a day before the frozen sums (a report re-run by hand): all of it
    elif closed is not None:
        freeze_usage_through(closed)
        frozen = select(FrozenUsage.customer_id, FrozenUsage.tokens_total, FrozenUsage.cost_total)
        for customer_id, tokens_total, cost_total in db.session.execute(frozen):
            totals[customer_id] = tokens_total if tokens else cost_total
    for customer_id, tokens_total, cost_total in db.session.execute(_sums(closed, day)):
        totals[customer_id] += Decimal((tokens_total if tokens else cost_total) or 0)
    _, unit = _units(settings)
    return {customer_id: total / unit for customer_id, total in totals.items()}


def _sums(after: date | None, through: date) -> Select[int, Any, Any]:
    """Per customer, tokens and cost over the days after ``after`` through ``through``
    (from the first day when ``after`` is None).

    Summed per key first, then per customer: the rollup's rows meet the key table
    once per key, not once per row (a quarter less time at 10,000 customers).
    """
    per_key = (
        select(
            UsageDaily.api_key_hash,
            func.sum(UsageDaily.tokens_total).label("tokens"),
            func.sum(UsageDaily.cost_total).label("cost"),
        )
        .where(UsageDaily.day <= through)
        .group_by(UsageDaily.api_key_hash)
    )
    if after is not None:
        per_key = per_key.where(UsageDaily.day > after)
    keys = per_key.subquery()
    return (
        select(
            ApiKey.customer_id,
            func.sum(keys.c.tokens).label("tokens"),
            func.sum(keys.c.cost).label("cost"),
        )
        .join(ApiKey, ApiKey.key_hash == keys.c.api_key_hash)
        .group_by(ApiKey.customer_id)
    )


def freeze_usage_through(closed: date) -> None:
    """Bring every customer's frozen sum up to day ``closed``: the days after its
    ``through_day``, or its whole history the first time (once).

    In SQL, a statement or two for all customers: the report writes no row
    object per customer, which at 10,000 customers cost more than the sums.
    """
    tokens, cost = func.sum(UsageDaily.tokens_total), func.sum(UsageDaily.cost_total)
    first_time = (
        select(
            ApiKey.customer_id,
            literal(closed, Date),
            func.coalesce(tokens, 0),
            func.coalesce(cost, 0),
        )
        .select_from(ApiKey)
        .outerjoin(
            UsageDaily,
            and_(UsageDaily.api_key_hash == ApiKey.key_hash, UsageDaily.day <= closed),
        )
        .where(ApiKey.customer_id.not_in(select(FrozenUsage.customer_id)))
        .group_by(ApiKey.customer_id)
    )
    columns = ["customer_id", "through_day", "tokens_total", "cost_total"]
    db.session.execute(insert(FrozenUsage).from_select(columns, first_time))
    behind = select(FrozenUsage.through_day).where(FrozenUsage.through_day < closed).distinct()
    for start in db.session.scalars(behind).all():
        added = _sums(start, closed).subquery()
        db.session.execute(
            update(FrozenUsage)
            .where(FrozenUsage.customer_id == added.c.customer_id)
            .where(FrozenUsage.through_day == start)
            .values(
                tokens_total=FrozenUsage.tokens_total + func.coalesce(added.c.tokens, 0),
                cost_total=FrozenUsage.cost_total + func.coalesce(added.c.cost, 0),
            )
        )
        db.session.execute(
            update(FrozenUsage).where(FrozenUsage.through_day == start).values(through_day=closed)
        )


def owed_in_units(
    settings: Settings, customers: Sequence[BillingCustomer], day: date
) -> dict[int, Decimal]:
    """What each customer owes through ``day`` under its plans, in report units, exactly."""
    owed = owed_through(customers, day, settings.max_event_age_days)
    with localcontext(prec=PRECISION):
        return {
            customer_id: total / settings.billing_cost_unit for customer_id, total in owed.items()
        }


def _prepaid_units(
    settings: Settings, customers: Sequence[BillingCustomer], day: date
) -> dict[int, Decimal]:
    """The prepaid customers' figure: what credits did not cover (``billable_through``),
    in report units. Credit is money, so a tokens meter takes none of it: there a
    prepaid customer's uncovered usage stays in the ledger, for an operator."""
    accounts = prepaid([c.id for c in customers])
    if not accounts:
        return {}
    if settings.billing_quantity == "tokens":
        log.warning("prepaid customers are not reported on a tokens meter: %s", sorted(accounts))
        return dict.fromkeys(accounts, Decimal(0))
    end = datetime.combine(day + timedelta(days=1), time(), tzinfo=UTC)
    owed = billable_through(list(accounts), end)
    with localcontext(prec=PRECISION):
        return {
            customer_id: owed.get(customer_id, Decimal(0)) / settings.billing_cost_unit
            for customer_id in accounts
        }


def _event_timestamp(day: date, now: datetime) -> int:
    """The last second of ``day``, so the usage lands in the invoice period of that day."""
    end = datetime.combine(day, time(23, 59, 59), tzinfo=UTC)
    return int(min(end, now).timestamp())


def _needs_manual(report: UsageReport, reason: str) -> str:
    """Park a report for an operator (``flask billing status`` lists it); never send it."""
    report.status = ReportStatus.NEEDS_MANUAL
    report.last_error = reason
    db.session.commit()
    log.error("report needs manual billing: %s", reason, extra={"identifier": report.identifier})
    return ReportStatus.NEEDS_MANUAL


def _send(
    stripe: StripeGateway, report: UsageReport, customer: BillingCustomer, now: datetime
) -> str:
    """Send one ledger row; its status afterwards (a Stripe failure raises)."""
    if datetime.combine(report.day, time(23, 59, 59), tzinfo=UTC) < now - STRIPE_MAX_EVENT_AGE:
        return _needs_manual(report, "older than Stripe accepts for meter events; bill by hand")
    if report.attempts and report.created_at < now - STRIPE_DEDUPE_WINDOW:
        # An earlier attempt may have reached Stripe, which no longer remembers its
        # identifier: sending it again could bill twice.
        return _needs_manual(
            report,
            "an earlier attempt's outcome is unknown and Stripe no longer dedupes it; "
            "check Stripe for this identifier before billing by hand",
        )
    report.attempts += 1
    try:
        stripe.send_meter_event(
            event_name=report.stripe_event_name,
            stripe_customer_id=customer.stripe_customer_id or "",
            value=report.quantity,
            identifier=report.identifier,
            timestamp=_event_timestamp(report.day, now),
        )
    except (BillingUnavailable, BillingRejected, Conflict) as exc:
        report.status = ReportStatus.FAILED
        report.last_error = str(exc)[:2000]
        db.session.commit()
        raise
    mark_sent(report)
    return ReportStatus.SENT


def mark_sent(report: UsageReport) -> None:
    report.status = ReportStatus.SENT
    report.sent_at = utcnow()
    report.last_error = None
    db.session.commit()


def report_customer(
    settings: Settings,
    stripe: StripeGateway,
    customer: BillingCustomer,
    day: date,
    exact: Decimal,
    now: datetime,
) -> str:
    """Settle one customer for ``day``: re-send what is owed, then report anything new."""
    owed = db.session.scalars(
        select(UsageReport)
        .where(
            UsageReport.customer_id == customer.id,
            UsageReport.status.in_([ReportStatus.PENDING, ReportStatus.FAILED]),
        )
        .order_by(UsageReport.id)
    ).all()
    outcomes = [_send(stripe, report, customer, now) for report in owed]
    already = db.session.scalar(
        select(func.coalesce(func.sum(UsageReport.quantity), 0)).where(
            UsageReport.customer_id == customer.id
        )
    )
    target = int(exact.to_integral_value(rounding=ROUND_FLOOR))
    delta = target - int(already or 0)
    if delta < 0:
        # Owed less than was sent (a plan or price corrected down): a credit an
        # operator gives by hand, never a negative meter event.
        report = _ledger_row(settings, customer, day, exact, target, delta)
        _needs_manual(report, f"credit of {-delta} {report.quantity_unit}: owed less than was sent")
        return _outcome([*outcomes, ReportStatus.NEEDS_MANUAL])
    if delta == 0:
        return _outcome(outcomes)
    report = _ledger_row(settings, customer, day, exact, target, delta)
    outcomes.append(_send(stripe, report, customer, now))
    return _outcome(outcomes)


def _ledger_row(
    settings: Settings,
    customer: BillingCustomer,
    day: date,
    exact: Decimal,
    target: int,
    delta: int,
) -> UsageReport:
    """The day's next row of the ledger, committed before anything is sent."""
    seq = db.session.scalar(
        select(func.coalesce(func.max(UsageReport.seq) + 1, 0)).where(
            UsageReport.customer_id == customer.id, UsageReport.day == day
        )
    )
    unit_name, _ = _units(settings)
    # Unique beyond this database: a staging deployment, or this one rebuilt, may
    # report to the same Stripe account, whose identifiers are one namespace. The
    # random part is kept in the ledger with the rest, so a retry sends it unchanged.
    identifier = f"ub-{secrets.token_hex(8)}-{customer.id}-{day:%Y%m%d}-{seq}"
    report = UsageReport(
        customer_id=customer.id,
        day=day,
        seq=seq,
        mode=MODE,
        quantity=delta,
        quantity_unit=unit_name,
        # What was owed, to the money column's 12 places (the floor is what is billed).
        cumulative_exact=exact.quantize(_STORED, rounding=ROUND_HALF_EVEN),
        cumulative_units=target,
        identifier=identifier,
        idempotency_key=identifier,
        stripe_event_name=settings.stripe_meter_event_name,
        status=ReportStatus.PENDING,
        attempts=0,
    )
    db.session.add(report)
    db.session.commit()
    return report


def _outcome(statuses: list[str]) -> str:
    if ReportStatus.NEEDS_MANUAL in statuses:
        return ReportStatus.NEEDS_MANUAL
    return ReportStatus.SENT if ReportStatus.SENT in statuses else "nothing_to_send"


def report_day(
    settings: Settings,
    stripe: StripeGateway,
    day: date,
    now: datetime | None = None,
    progress: Progress = unwatched,
) -> ReportSummary:
    """Report ``day`` for every active Stripe customer; one customer's failure stops no other."""
    now = now or utcnow()
    summary = ReportSummary(day=day)
    customers = db.session.scalars(
        select(BillingCustomer)
        .where(BillingCustomer.is_active.is_(True), BillingCustomer.stripe_customer_id.is_not(None))
        .order_by(BillingCustomer.id)
    ).all()
    # Tokens are reported as used; cost, as owed under each customer's plan.
    if settings.billing_quantity == "tokens":
        usage = cumulative_usage(settings, day)
    else:
        usage = owed_in_units(settings, customers, day)
        db.session.commit()  # the periods it froze
    usage.update(_prepaid_units(settings, customers, day))
    for done, customer in enumerate(customers):
        progress(done, len(customers))
        exact = usage.get(customer.id, Decimal(0))
        summary.customers += 1
        try:
            outcome = report_customer(settings, stripe, customer, day, exact, now)
        except (BillingUnavailable, BillingRejected, Conflict) as exc:
            db.session.rollback()
            summary.failed.append(f"customer {customer.id}: {exc}")
            log.error("report failed for customer %s: %s", customer.id, exc)
            continue
        if outcome == ReportStatus.SENT:
            summary.sent += 1
        elif outcome == ReportStatus.NEEDS_MANUAL:
            summary.needs_manual += 1
        else:
            summary.nothing_to_send += 1
    progress(len(customers), len(customers))
    return summary


def reports_needing_manual() -> list[UsageReport]:
    return list(
        db.session.scalars(
            select(UsageReport)
            .where(UsageReport.status == ReportStatus.NEEDS_MANUAL)
            .order_by(UsageReport.id)
        )
    )


def resolve_manual(identifier: str, note: str) -> UsageReport:
    """Record that an operator settled a needs_manual report; it is never sent."""
    report = db.session.scalar(
        select(UsageReport).where(
            UsageReport.identifier == identifier, UsageReport.status == ReportStatus.NEEDS_MANUAL
        )
    )
    if report is None:
        raise NotFound(f"no report {identifier} needs manual billing", field="identifier")
    report.status = ReportStatus.RESOLVED
    report.last_error = f"resolved by hand: {note}"[:2000]
    db.session.commit()
    return report
