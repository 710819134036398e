"""What a budget has spent, from PostgreSQL (the truth), and keeping Redis in step with it.

``sync_customer`` publishes a customer's keys and budget rules after any change;
``rebuild`` does it for everyone, with every budget's current spend, when Redis
lost its state. ``settle_batch`` runs in the worker after a batch is committed:
for each budget the batch's keys fall under, the period's spend is summed from
``usage_daily`` and mirrored, the recorded calls' reservations released, and any
threshold reached raises its alert (``app.budgets.alerts``).
"""

from __future__ import annotations

import logging
import re
from collections import defaultdict
from collections.abc import Iterable
from datetime import datetime, timedelta
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal, localcontext
from typing import Any, NamedTuple, cast

from sqlalchemy import Select, func, select

from app.budgets.alerts import raise_alerts
from app.budgets.counters import Counters, KeyRecord, Rule, to_units
from app.budgets.models import USD, Budget
from app.columns import MONEY_SCALE
from app.config import Settings
from app.credits.ledger import blocking, blocking_exists, burnt_and_available, prepaid
from app.credits.models import CreditAccount, Overage
from app.customers.models import ApiKey, BillingCustomer
from app.dialect import one_of
from app.extensions import db
from app.ingest.models import UsageDaily
from app.observability.metrics import BUDGET_LIMITS_REACHED
from app.periods import Period, PeriodKind
from app.plans.charges import PRECISION, ZERO
from app.plans.services import owed_between
from app.ratelimits.limits import limits_by_key

log = logging.getLogger("usage_billing.budgets")
REBUILD_TASK = "budgets.rebuild"  # every minute, and when the API finds Redis emptied
_HASH = re.compile(r"[0-9a-f]{64}")
_STORED = Decimal(1).scaleb(-MONEY_SCALE)


def rule_of(budget: Budget, anchor_day: int) -> Rule:
    limit = to_units(budget.metric, budget.effective_limit, rounding=ROUND_FLOOR)
    period = cast(PeriodKind, budget.period)  # one of them: the API and the table check it
    return Rule(budget.id, budget.metric, period, limit, budget.hard_limit, anchor_day)


def _summed(keys: Select[Any], column: Any, period: Period) -> tuple[Decimal, int]:
    first, last = period.days
    total, calls = db.session.execute(
        select(
            func.coalesce(func.sum(column), 0), func.coalesce(func.sum(UsageDaily.events), 0)
        ).where(UsageDaily.api_key_hash.in_(keys), UsageDaily.day.between(first, last))
    ).one()
    return Decimal(total), int(calls)


def spent_in(budget: Budget, period: Period) -> tuple[Decimal, int]:
    """The budget's spend (USD or tokens) and calls in ``period``, from the daily rollup.

    In USD a budget counts what the customer owes under its plans (a markup, its own
    prices, tiers, included usage), not what the calls cost us; a key's budget counts
    the key's share of it, in proportion to its calls' cost.
    """
    customer_keys = select(ApiKey.key_hash).where(ApiKey.customer_id == budget.customer_id)
    keys = _keys_of(budget)
    if budget.metric != USD:
        return _summed(keys, UsageDaily.tokens_total, period)
    cost, calls = _summed(keys, UsageDaily.cost_total, period)
    customer = db.session.get(BillingCustomer, budget.customer_id)
    owed = owed_between(customer, *period.days) if customer is not None else None
    if owed is None:
        return cost, calls
    if budget.api_key_id is None:
        return owed, calls
    customer_cost, _ = _summed(customer_keys, UsageDaily.cost_total, period)
    if not customer_cost:
        return ZERO, calls
    with localcontext(prec=PRECISION):  # a share is no exact figure: stored money, rounded up
        return (owed * cost / customer_cost).quantize(_STORED, ROUND_CEILING), calls


class Estimates(NamedTuple):
    """What a call is taken to cost when nothing of the customer's says (settings)."""

    usd: Decimal
    tokens: int

    @classmethod
    def from_settings(cls, settings: Settings) -> Estimates:
        return cls(settings.budget_call_estimate_usd, settings.budget_call_estimate_tokens)


HISTORY_DAYS = 30


def estimate_of(
    budget: Budget, period: Period, spent: Decimal, calls: int, defaults: Estimates
) -> int:
    """What one call of this budget reserves at admission, in Redis units (rounded up).

    The period's mean cost per call, once the period has calls; before that (a
    period's first calls, a budget new in a period) the mean of the budget's keys
    over the ``HISTORY_DAYS`` before the period, in the budget's metric (in USD, the
    provider cost: a plan's markup is not in it); with no history at all, the
    stated default (``BUDGET_CALL_ESTIMATE_USD`` / ``_TOKENS``), never more than
    the limit itself (a budget smaller than the default admits its first call, and
    the next once that one is recorded). A call costing more than its estimate is
    what the overshoot bound counts.
    """
    if calls:
        return -(-to_units(budget.metric, spent) // calls)
    first, _ = period.days
    keys = _keys_of(budget)
    column = UsageDaily.tokens_total if budget.metric != USD else UsageDaily.cost_total
    total, past_calls = db.session.execute(
        select(
            func.coalesce(func.sum(column), 0), func.coalesce(func.sum(UsageDaily.events), 0)
        ).where(
            UsageDaily.api_key_hash.in_(keys),
            UsageDaily.day.between(first - timedelta(days=HISTORY_DAYS), first - timedelta(days=1)),
        )
    ).one()
    if past_calls:
        return max(1, -(-to_units(budget.metric, Decimal(str(total))) // int(past_calls)))
    default = defaults.usd if budget.metric == USD else Decimal(defaults.tokens)
    limit = to_units(budget.metric, budget.effective_limit, rounding=ROUND_FLOOR)
    return max(1, min(to_units(budget.metric, default), limit))


def _keys_of(budget: Budget) -> Select[Any]:
    keys = select(ApiKey.key_hash).where(ApiKey.customer_id == budget.customer_id)
    if budget.api_key_id is not None:
        keys = keys.where(ApiKey.id == budget.api_key_id)
    return keys


def mirror(
    counters: Counters,
    budget: Budget,
    anchor_day: int,
    now: datetime,
    defaults: Estimates,
    call_ids: Iterable[str] = (),
) -> tuple[Rule, Period, Decimal]:
    """Write a budget's current period to Redis as PostgreSQL holds it: its spend and
    the estimate its calls reserve; release ``call_ids``. The rule, period and spend."""
    rule = rule_of(budget, anchor_day)
    period = rule.period_at(now)
    spent, calls = spent_in(budget, period)
    estimate = estimate_of(budget, period, spent, calls, defaults)
    counters.settle(rule, period, spent, estimate, call_ids, now)
    return rule, period, spent


def credit_rule(customer_id: int) -> Rule:
    """A prepaid customer's balance as admission checks it, beside its budgets: a hard
    limit over its whole life (what its grants may pay in all, against what they
    have paid), so one script decides budgets and balance together."""
    _, available = burnt_and_available(customer_id)
    limit = to_units(USD, available, rounding=ROUND_FLOOR)
    return Rule(-customer_id, USD, "lifetime", limit, True, 1)


def is_credit_rule(rule: Rule) -> bool:
    return rule.budget_id < 0


def credit_estimate(
    customer: BillingCustomer, now: datetime, defaults: Estimates, limit_units: int
) -> int:
    """What one call of a prepaid customer reserves: what it owed per call over the
    last ``HISTORY_DAYS`` (under its plans; at provider cost, the rollup's cost), else
    the stated default, never more than the credit it may spend in all (a balance
    smaller than the default admits its first call, as a small budget does)."""
    today = now.date()
    first = today - timedelta(days=HISTORY_DAYS)
    keys = select(ApiKey.key_hash).where(ApiKey.customer_id == customer.id)
    cost, calls = db.session.execute(
        select(
            func.coalesce(func.sum(UsageDaily.cost_total), 0),
            func.coalesce(func.sum(UsageDaily.events), 0),
        ).where(UsageDaily.api_key_hash.in_(keys), UsageDaily.day.between(first, today))
    ).one()
    if not calls:
        return max(1, min(to_units(USD, defaults.usd), limit_units))
    owed = owed_between(customer, first, today)
    total = Decimal(cost) if owed is None else owed
    return max(1, -(-to_units(USD, total) // int(calls)))


def mirror_credits(
    counters: Counters,
    customer: BillingCustomer,
    now: datetime,
    defaults: Estimates,
    call_ids: Iterable[str] = (),
) -> Rule:
    """Write a prepaid customer's balance to Redis as PostgreSQL holds it (what its
    grants paid, the estimate a call reserves); release ``call_ids``. Its rule."""
    rule = credit_rule(customer.id)
    burnt, _ = burnt_and_available(customer.id)
    estimate = credit_estimate(customer, now, defaults, rule.limit_units)
    counters.settle(rule, rule.period_at(now), burnt, estimate, call_ids, now)
    return rule


def _records(customers: Iterable[BillingCustomer]) -> dict[str, KeyRecord]:
    by_id = {c.id: c for c in customers}
    budgets: dict[int, list[Budget]] = defaultdict(list)
    for budget in db.session.scalars(select(Budget).where(Budget.customer_id.in_(by_id))):
        budgets[budget.customer_id].append(budget)
    credits = {
        account.customer_id: credit_rule(account.customer_id)
        for account in prepaid(list(by_id)).values()
        if account.overage == Overage.BLOCK
    }
    records = {}
    keys = db.session.scalars(select(ApiKey).where(ApiKey.customer_id.in_(by_id))).all()
    limits = limits_by_key(keys)
    for key in keys:
        customer = by_id[key.customer_id]
        anchor = customer.created_at.day
        rules = tuple(
            rule_of(b, anchor)
            for b in budgets[key.customer_id]
            if b.api_key_id is None or b.api_key_id == key.id
        )
        if key.customer_id in credits:
            rules += (credits[key.customer_id],)
        revoked = key.revoked_at is not None or not customer.is_active
        records[key.key_hash] = KeyRecord(customer.id, revoked, rules, limits.get(key.id, ()))
    return records


def sync_customer(
    counters: Counters, customer_id: int, now: datetime, defaults: Estimates
) -> list[str]:
    """Publish one customer's keys and rules, each budget's spend and estimate first,
    after a change to either (a budget new, or lowered below its spend, is decided on
    what is spent at once, not from the next recorded batch on); their hashes."""
    customer = db.session.get(BillingCustomer, customer_id)
    if customer is None:
        return []
    for budget in db.session.scalars(select(Budget).where(Budget.customer_id == customer_id)):
        mirror(counters, budget, customer.created_at.day, now, defaults)
    account = prepaid([customer_id]).get(customer_id)
    if account is not None and account.overage == Overage.BLOCK:
        mirror_credits(counters, customer, now, defaults)
    records = _records([customer])
    counters.publish(records)
    return list(records)


def rebuild(counters: Counters, now: datetime, defaults: Estimates) -> int:
    """Publish every budget's current spend, then every key; then mark the state loaded."""
    customers = db.session.scalars(select(BillingCustomer)).all()
    anchors = {c.id: c.created_at.day for c in customers}
    budgets = db.session.scalars(select(Budget)).all()
    for budget in budgets:
        mirror(counters, budget, anchors[budget.customer_id], now, defaults)
    by_id = {c.id: c for c in customers}
    for account in blocking():
        mirror_credits(counters, by_id[account.customer_id], now, defaults)
    counters.publish(_records(customers))
    counters.mark_loaded()
    return len(budgets)


def budgets_touched(key_hashes: Iterable[str]) -> list[tuple[Budget, int, list[str]]]:
    """The budgets these keys fall under: (budget, anchor day, the batch keys under it).

    A deployment without budgets pays one probe of the empty budgets table per batch."""
    hashes = sorted(set(key_hashes))
    if not hashes or db.session.scalar(select(Budget.id).limit(1)) is None:
        return []
    rows = db.session.execute(
        select(Budget, ApiKey.key_hash, BillingCustomer.created_at)
        .join(ApiKey, ApiKey.customer_id == Budget.customer_id)
        .join(BillingCustomer, BillingCustomer.id == Budget.customer_id)
        .where(
            one_of(ApiKey.key_hash, "hashes"),
            (Budget.api_key_id.is_(None)) | (Budget.api_key_id == ApiKey.id),
        ),
        {"hashes": hashes},
    ).all()
    touched: dict[int, tuple[Budget, int, list[str]]] = {}
    for budget, key_hash, created in rows:
        touched.setdefault(budget.id, (budget, created.day, []))[2].append(key_hash)
    return list(touched.values())


def prepaid_touched(key_hashes: Iterable[str]) -> list[tuple[BillingCustomer, list[str]]]:
    """The customers of these keys whose calls stop at a zero balance, with their keys
    of the batch. A deployment without them pays one probe of an empty table."""
    hashes = sorted(set(key_hashes))
    if not hashes or not blocking_exists():
        return []
    rows = db.session.execute(
        select(BillingCustomer, ApiKey.key_hash)
        .join(ApiKey, ApiKey.customer_id == BillingCustomer.id)
        .join(CreditAccount, CreditAccount.customer_id == BillingCustomer.id)
        .where(one_of(ApiKey.key_hash, "hashes"), CreditAccount.overage == Overage.BLOCK),
        {"hashes": hashes},
    ).all()
    touched: dict[int, tuple[BillingCustomer, list[str]]] = {}
    for customer, key_hash in rows:
        touched.setdefault(customer.id, (customer, []))[1].append(key_hash)
    return list(touched.values())


def settle_batch(
    counters: Counters, events: Iterable[Any], now: datetime, defaults: Estimates
) -> list[int]:
    """After a batch is recorded: mirror each touched budget's spend, release the
    recorded calls' reservations, raise alerts for thresholds reached. The ids of the
    alerts raised.

    Each settle sums the whole period from PostgreSQL, so a settle that failed (Redis
    away) is made good by the next batch of the same customer, or by the minute's
    ``budgets.rebuild`` job."""
    calls_by_key: dict[str, list[str]] = defaultdict(list)
    for event in events:
        if not isinstance(event, dict) or not _HASH.fullmatch(str(event.get("api_key_hash"))):
            continue  # parked as invalid: it counts nowhere
        calls = calls_by_key[event["api_key_hash"]]  # the key counts, reserved or not
        metadata = event.get("metadata")
        if isinstance(metadata, dict) and isinstance(metadata.get("budget_call"), str):
            calls.append(metadata["budget_call"])
    raised = []
    for customer, key_hashes in prepaid_touched(calls_by_key):
        mirror_credits(
            counters, customer, now, defaults, [c for k in key_hashes for c in calls_by_key[k]]
        )
    for budget, anchor, key_hashes in budgets_touched(calls_by_key):
        call_ids = [call for key in key_hashes for call in calls_by_key[key]]
        rule, period, spent = mirror(counters, budget, anchor, now, defaults, call_ids)
        raised.extend(raise_alerts(budget, period, spent))
        reached = budget.hard_limit and spent >= budget.effective_limit
        if reached and counters.first_time(rule, period, "limit-reached", now):
            # For operators: a customer's calls are being refused from now on.
            BUDGET_LIMITS_REACHED.inc()
            log.error(
                "hard budget limit reached",
                extra={"budget_id": budget.id, "customer_id": budget.customer_id},
            )
    db.session.commit()
    return raised
