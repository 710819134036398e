"""The periods budgets count over and plans bill by, at any instant: a UTC day, a calendar
month, or the customer's billing period.

Every period starts and ends at midnight UTC, so a period's spend is a sum of whole
days of ``usage_daily``. The billing period is monthly from the customer's billing
anchor: the day of the month it was created, as Stripe anchors a monthly
subscription at its start; in a month without that day it starts on the month's
last day.
"""

from __future__ import annotations

import calendar
from datetime import UTC, date, datetime, time, timedelta
from functools import lru_cache
from typing import Literal, NamedTuple

PeriodKind = Literal["day", "month", "billing_period", "lifetime"]
PERIODS: tuple[PeriodKind, ...] = ("day", "month", "billing_period")  # a budget's


class Period(NamedTuple):
    """[start, end) in UTC days: the first day counted and the first day not counted."""

    start: date
    end: date

    @property
    def ends_at(self) -> datetime:
        return datetime.combine(self.end, time(), tzinfo=UTC)

    @property
    def days(self) -> tuple[date, date]:
        """The first and the last day counted, for ``usage_daily.day BETWEEN``."""
        return self.start, self.end - timedelta(days=1)


# What a credit balance counts over: every day a customer can have used.
LIFETIME = Period(date(2000, 1, 1), date(2100, 1, 1))


def _anchored(year: int, month: int, anchor_day: int) -> date:
    return date(year, month, min(anchor_day, calendar.monthrange(year, month)[1]))


def _next_month(year: int, month: int) -> tuple[int, int]:
    return (year + 1, 1) if month == 12 else (year, month + 1)


def _previous_month(year: int, month: int) -> tuple[int, int]:
    return (year - 1, 12) if month == 1 else (year, month - 1)


def period_at(kind: PeriodKind, now: datetime, anchor_day: int = 1) -> Period:
    """The period of this kind holding ``now`` (``anchor_day`` for the billing period)."""
    if kind == "lifetime":
        return LIFETIME
    today = now.astimezone(UTC).date()
    if kind == "day":
        return Period(today, today + timedelta(days=1))
    if kind == "month":
        first = today.replace(day=1)
        return Period(first, date(*_next_month(today.year, today.month), 1))
    start = _anchored(today.year, today.month, anchor_day)
    if start > today:
        start = _anchored(*_previous_month(today.year, today.month), anchor_day)
    return Period(start, _anchored(*_next_month(start.year, start.month), anchor_day))


@lru_cache(maxsize=4096)
def billing_periods(first: date, last: date, anchor_day: int) -> tuple[Period, ...]:
    """The billing periods from the one holding ``first`` to the one holding ``last``
    (shared by every customer with the same anchor, hence cached)."""
    periods = [period_at("billing_period", _midnight(first), anchor_day)]
    while periods[-1].end <= last:
        periods.append(period_at("billing_period", _midnight(periods[-1].end), anchor_day))
    return tuple(periods)


def _midnight(day: date) -> datetime:
    return datetime.combine(day, time(), tzinfo=UTC)
