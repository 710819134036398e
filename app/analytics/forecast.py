"""Trends and a forecast: this month against the last, a month-end projection, and each
budget's projected spend against its limit, from the daily rollup.

The method, stated in every answer: what was spent before today, plus today at
the larger of what it has spent so far and the recent daily rate, plus that rate
for each day left; the rate is the mean of the last ``BASIS_DAYS`` complete days.
A projection is therefore never below what is already spent.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

from app.analytics.usage import UsageRequest, rollup_rows
from app.budgets.models import USD, Budget
from app.budgets.services import budget_period
from app.budgets.views import BudgetAnswer
from app.columns import amount_str
from app.customers.models import ApiKey
from app.periods import Period, period_at

BASIS_DAYS = 7
METHOD = (
    f"spent before today + today at max(spent today, the mean of the last {BASIS_DAYS} "
    f"complete days) + that mean for each later day of the period"
)
_CENT = Decimal("0.01")


@dataclass(frozen=True)
class Daily:
    """Cost and tokens per day, of some keys."""

    cost: dict[date, Decimal]
    tokens: dict[date, Decimal]

    def of(self, metric: str) -> dict[date, Decimal]:
        return self.cost if metric == USD else self.tokens


def daily(keys: list[ApiKey], first: date, last: date) -> Daily:
    """Each day's cost and tokens of these keys, from ``usage_daily``."""
    cost: dict[date, Decimal] = defaultdict(Decimal)
    tokens: dict[date, Decimal] = defaultdict(Decimal)
    request = UsageRequest(first, last, "day", ())
    for row in rollup_rows(keys, request, ("cost_total", "tokens_total")):
        cost[row.moment] += Decimal(row.cost_total or 0)
        tokens[row.moment] += Decimal(row.tokens_total or 0)
    return Daily(cost, tokens)


def _between(days: dict[date, Decimal], first: date, last: date) -> Decimal:
    return sum((value for day, value in days.items() if first <= day <= last), Decimal(0))


def project(days: dict[date, Decimal], period: Period, today: date) -> Decimal:
    """The period's spend at its end, by ``METHOD``."""
    before = _between(days, period.start, today - timedelta(days=1))
    rate = _between(days, today - timedelta(days=BASIS_DAYS), today - timedelta(days=1))
    rate /= BASIS_DAYS
    later = (period.end - today).days - 1
    return before + max(days.get(today, Decimal(0)), rate) + rate * max(later, 0)


def _shown(value: Decimal, metric: str) -> str:
    return amount_str(value.quantize(_CENT) if metric == USD else value.to_integral_value())


def _previous(month: Period) -> Period:
    """The calendar month before ``month``."""
    return Period((month.start - timedelta(days=1)).replace(day=1), month.start)


def _trend(days: dict[date, Decimal], month: Period, today: date, metric: str) -> dict[str, Any]:
    previous = _previous(month)
    first, last = previous.days
    same_days_end = min(first + timedelta(days=(today - month.start).days), last)
    to_date = _between(days, month.start, today)
    previous_same = _between(days, first, same_days_end)
    change = None
    if previous_same:
        change = float(((to_date - previous_same) * 100 / previous_same).quantize(_CENT))
    return {
        "month_to_date": _shown(to_date, metric),
        "previous_month_same_days": _shown(previous_same, metric),
        "previous_month": _shown(_between(days, first, last), metric),
        "change_percent": change,
        "projected_month": _shown(project(days, month, today), metric),
    }


def _budget_projection(budget: Budget, keys: list[ApiKey], now: datetime) -> dict[str, Any]:
    """The budget as its customer reads it, with its period's projected spend."""
    described = BudgetAnswer.of(budget, now).model_dump(mode="json")
    today = now.astimezone(UTC).date()
    period = budget_period(budget, now)
    scope = [k for k in keys if budget.api_key_id in (None, k.id)]
    first = min(period.start, today - timedelta(days=BASIS_DAYS))
    projected = project(daily(scope, first, today).of(budget.metric), period, today)
    limit = budget.effective_limit
    return {
        **described,
        "projected": _shown(projected, budget.metric),
        "projected_percent": float((projected * 100 / limit).quantize(_CENT)) if limit else None,
        "projected_over": projected > limit,
    }


def forecast(keys: list[ApiKey], budgets: Iterable[Budget], now: datetime) -> dict[str, Any]:
    """This month against the last, the month-end projection, and each budget's."""
    today = now.astimezone(UTC).date()
    month = period_at("month", now)
    seen = daily(keys, min(_previous(month).start, today - timedelta(days=BASIS_DAYS)), today)
    return {
        "as_of": now.isoformat(),
        "month": f"{month.start.year:04d}-{month.start.month:02d}",
        "currency": "usd",
        "method": METHOD,
        "basis_days": BASIS_DAYS,
        "cost": _trend(seen.cost, month, today, USD),
        "tokens": _trend(seen.tokens, month, today, "tokens"),
        "budgets": [_budget_projection(budget, keys, now) for budget in budgets],
    }
