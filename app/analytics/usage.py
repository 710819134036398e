"""A customer's usage over a date range, by period and by any of its dimensions.

Read from the rollups, never from events: ``usage_daily`` (per key, day, provider
and model; the whole history) when the question needs nothing finer, else
``usage_hourly`` (per hour, task type and status too; kept for
``USAGE_HOURLY_RETENTION_DAYS``). Either way a 31-day question is a few hundred
rows grouped by PostgreSQL, however many events there are.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import func, select

from app.columns import amount_str, money_str
from app.customers.models import ApiKey
from app.extensions import db
from app.ingest.models import NO_TASK_TYPE, UsageDaily, UsageHourly
from app.plans.charges import exact_sum
from app.pricing.dimensions import COLUMNS

# The rollup column each dimension is read from.
_COLUMNS = {
    "provider": "provider",
    "model": "model",
    "task_type": "task_type",
    "status": "status",
    "key": "api_key_hash",
}
HOURLY_ONLY = frozenset({"task_type", "status"})  # dimensions the daily rollup does not keep


@dataclass(frozen=True)
class Usage:
    """Events, tokens of each dimension and cost, of one group in one period or added up
    over many (``app/pricing/dimensions.py`` says what each token count holds)."""

    events: int = 0
    unpriced_events: int = 0
    flagged_events: int = 0
    cost: Decimal = Decimal(0)
    tokens_input: int = 0
    tokens_output: int = 0
    tokens_cache_read: int = 0
    tokens_cache_write: int = 0
    tokens_input_audio: int = 0
    tokens_cache_audio_read: int = 0
    tokens_output_audio: int = 0
    tokens_output_reasoning: int = 0
    tokens_total: int = 0

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            **{f.name: getattr(self, f.name) + getattr(other, f.name) for f in fields(self)}
        )

    def as_json(self) -> dict[str, Any]:
        shown: dict[str, Any] = {f.name: getattr(self, f.name) for f in fields(self)}
        shown["cost"] = money_str(self.cost)
        return shown


# The rollup sums a Usage is read from, in its fields' order.
USAGE_SUMS = ("events", "unpriced_events", "flagged_events", "cost_total", *COLUMNS, "tokens_total")


def usage_of_row(row: Any) -> Usage:
    """A rollup row's ``USAGE_SUMS`` as a Usage (PostgreSQL sums integers as numeric)."""
    counts: dict[str, Any] = {
        name: int(getattr(row, name) or 0) for name in USAGE_SUMS if name != "cost_total"
    }
    return Usage(cost=Decimal(row.cost_total or 0), **counts)


def _total(usages: Iterable[Usage]) -> Usage:
    return sum(usages, Usage())


@dataclass(frozen=True)
class UsageRequest:
    """What to read: a range of days, cut into periods, grouped and filtered."""

    start: date
    end: date
    granularity: str = "day"
    group_by: tuple[str, ...] = ("provider", "model")
    filters: Mapping[str, tuple[Any, ...]] = field(default_factory=dict)

    @property
    def needs_hours(self) -> bool:
        asked = {*self.group_by, *self.filters}
        return self.granularity == "hour" or bool(asked & HOURLY_ONLY)


def key_json(key: ApiKey) -> dict[str, Any]:
    """A key as usage shows it: by id and label, never the key nor its hash."""
    return {"id": key.id, "label": key.label, "prefix": key.prefix}


@dataclass(frozen=True)
class Group:
    """One group's usage in one period; ``values`` holds its dimensions' values."""

    values: tuple[Any, ...]
    usage: Usage


@dataclass(frozen=True)
class UsageSummary:
    """What ``GET /v1/billing/usage`` answers: each period's usage by group, and the totals."""

    request: UsageRequest
    periods: dict[str, list[Group]]
    keys: dict[str, ApiKey]
    # What each period added to the charge under the customer's plans (USD); empty
    # when the question has filters or hours, which a charge is not made of.
    charges: dict[str, Decimal] = field(default_factory=dict)

    @property
    def totals(self) -> Usage:
        return _total(g.usage for groups in self.periods.values() for g in groups)

    def _dimensions(self, values: tuple[Any, ...]) -> dict[str, Any]:
        shown: dict[str, Any] = {}
        for name, value in zip(self.request.group_by, values, strict=True):
            if name == "key":
                shown[name] = key_json(self.keys[value])
            elif name == "task_type":
                shown[name] = None if value == NO_TASK_TYPE else value
            else:
                shown[name] = value
        return shown

    def as_json(self) -> dict[str, Any]:
        charged = not self.request.filters and self.request.granularity != "hour"
        periods = []
        for label, groups in sorted(self.periods.items()):
            total = _total(g.usage for g in groups)
            entry: dict[str, Any] = {
                "period": label,
                "cost": money_str(total.cost),
                "tokens_total": total.tokens_total,
            }
            if charged:
                entry["charge"] = amount_str(self.charges.get(label, Decimal(0)))
            entry["groups"] = [{**self._dimensions(g.values), **g.usage.as_json()} for g in groups]
            periods.append(entry)
        totals = self.totals.as_json()
        if charged:
            totals["charge"] = amount_str(exact_sum(self.charges.values()))
        request = self.request
        return {
            "start_date": request.start.isoformat(),
            "end_date": request.end.isoformat(),
            "currency": "usd",
            "granularity": request.granularity,
            "group_by": list(request.group_by),
            "filters": {name: list(values) for name, values in request.filters.items()},
            "totals": totals,
            "periods": periods,
        }


def period_label(moment: date | datetime, request: UsageRequest) -> str:
    """The period a rollup row falls in, as the answer names it; "total" is the whole
    range, as an ISO 8601 interval of days."""
    if request.granularity == "total":
        return f"{request.start.isoformat()}/{request.end.isoformat()}"
    if request.granularity == "month":
        return f"{moment.year:04d}-{moment.month:02d}"
    if request.granularity == "hour":
        assert isinstance(moment, datetime)
        return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:00:00Z")
    return (moment.date() if isinstance(moment, datetime) else moment).isoformat()


def day_start(day: date) -> datetime:
    return datetime.combine(day, time(), tzinfo=UTC)


def rollup_rows(
    keys: list[ApiKey], request: UsageRequest, sums: Iterable[str] = USAGE_SUMS
) -> list[Any]:
    """The rollup rows of these keys in the range, summed by moment and ``group_by``.

    Each row holds ``moment`` (a day, or an hour; none for the granularity
    ``total``, whose one period is the range), the dimensions by name, then ``sums``.
    """
    table = (UsageHourly if request.needs_hours else UsageDaily).__table__
    hashes = [k.key_hash for k in keys]
    if "key" in request.filters:
        wanted = set(request.filters["key"])
        hashes = [k.key_hash for k in keys if k.id in wanted]
    if request.needs_hours:
        moment = table.c.hour
        in_range = [
            moment >= day_start(request.start),
            moment < day_start(request.end + timedelta(1)),
        ]
    else:
        moment = table.c.day
        in_range = [moment >= request.start, moment <= request.end]
    dimensions = [table.c[_COLUMNS[name]].label(name) for name in request.group_by]
    filters = [
        table.c[_COLUMNS[name]].in_(values)
        for name, values in request.filters.items()
        if name != "key"
    ]
    by = dimensions if request.granularity == "total" else [moment.label("moment"), *dimensions]
    query = (
        select(*by, *(func.sum(table.c[name]).label(name) for name in sums))
        .where(table.c.api_key_hash.in_(hashes), *in_range, *filters)
        .group_by(*by)
    )
    return list(db.session.execute(query))


def usage_between(
    keys: list[ApiKey], request: UsageRequest, charges: Mapping[date, Decimal] | None = None
) -> UsageSummary:
    """The usage of these keys (a customer's), per period and group.

    ``charges`` (what each day added to the customer's charge) are added up per
    period; they are left out where a charge is not made of what is shown.
    """
    by_hash = {key.key_hash: key for key in keys}
    cells: dict[tuple[str, tuple[Any, ...]], Usage] = defaultdict(Usage)
    for row in rollup_rows(keys, request):
        values = tuple(getattr(row, name) for name in request.group_by)
        cell = (period_label(getattr(row, "moment", request.start), request), values)
        cells[cell] += usage_of_row(row)
    periods: dict[str, list[Group]] = defaultdict(list)
    for (label, values), usage in sorted(cells.items(), key=lambda cell: _order(cell[0])):
        periods[label].append(Group(values, usage))
    summed: dict[str, Decimal] = defaultdict(Decimal)
    for day, charge in (charges or {}).items():
        summed[period_label(day, request)] += charge
    return UsageSummary(request, dict(periods), by_hash, dict(summed))


def _order(cell: tuple[str, tuple[Any, ...]]) -> tuple[Any, ...]:
    label, values = cell
    return (label, *(str(value) for value in values))
