"""A customer's usage over a date range, read from the daily rollup.

Reading ``usage_daily`` (one row per key, day and model) keeps a 31-day query to
a few hundred rows however many events there are.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal
from typing import Any

from sqlalchemy import select

from app.customers.models import ApiKey
from app.extensions import db
from app.ingest.models import UsageDaily
from app.models.types import amount_str, money_str
from app.plans.charges import exact_sum


@dataclass(frozen=True)
class Usage:
    """Events, tokens and cost, of one model on one day or added up over many."""

    events: int = 0
    unpriced_events: int = 0
    cost: Decimal = Decimal(0)
    tokens_input: int = 0
    tokens_output: int = 0
    tokens_cache_read: int = 0
    tokens_total: int = 0

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            *(getattr(self, name) + getattr(other, name) for name in self.__dataclass_fields__)
        )

    def as_json(self) -> dict[str, Any]:
        return {
            "events": self.events,
            "unpriced_events": self.unpriced_events,
            "cost": money_str(self.cost),
            "tokens_input": self.tokens_input,
            "tokens_output": self.tokens_output,
            "tokens_cache_read": self.tokens_cache_read,
            "tokens_total": self.tokens_total,
        }


def _total(usages: list[Usage]) -> Usage:
    return sum(usages, Usage())


@dataclass(frozen=True)
class ModelDay:
    """One model's usage on one day: of all the customer's keys, or of one (``key``)."""

    provider: str
    model: str
    usage: Usage
    key: ApiKey | None = None

    def as_json(self) -> dict[str, Any]:
        entry: dict[str, Any] = {"provider": self.provider, "model": self.model}
        if self.key is not None:  # the key by id and label: never the key, nor its hash
            entry["key"] = {"id": self.key.id, "label": self.key.label, "prefix": self.key.prefix}
        return {**entry, **self.usage.as_json()}


@dataclass(frozen=True)
class UsageSummary:
    """What ``GET /v1/billing/usage`` answers: each day's usage by model, and the totals."""

    start: date
    end: date
    days: dict[date, list[ModelDay]]
    # What each day added to the charge under the customer's plans (USD).
    charges: dict[date, Decimal] = field(default_factory=dict)

    @property
    def totals(self) -> Usage:
        return _total([m.usage for models in self.days.values() for m in models])

    def as_json(self) -> dict[str, Any]:
        days = []
        for day, models in sorted(self.days.items()):
            total = _total([m.usage for m in models])
            days.append(
                {
                    "date": day.isoformat(),
                    "cost": money_str(total.cost),
                    "charge": amount_str(self.charges.get(day, Decimal(0))),
                    "tokens_total": total.tokens_total,
                    "models": [m.as_json() for m in models],
                }
            )
        return {
            "start_date": self.start.isoformat(),
            "end_date": self.end.isoformat(),
            "currency": "usd",
            "totals": {
                **self.totals.as_json(),
                "charge": amount_str(exact_sum(self.charges.values())),
            },
            "days": days,
        }


def usage_between(keys: list[ApiKey], start: date, end: date, by_key: bool) -> UsageSummary:
    """The usage of these keys (a customer's), per day and model; per key too if ``by_key``."""
    by_hash = {key.key_hash: key for key in keys}
    rows = db.session.scalars(
        select(UsageDaily)
        .where(
            UsageDaily.api_key_hash.in_(by_hash),
            UsageDaily.day >= start,
            UsageDaily.day <= end,
        )
        .order_by(UsageDaily.day, UsageDaily.provider, UsageDaily.model)
    ).all()
    cells: dict[tuple[date, str, str, int | None], Usage] = defaultdict(Usage)
    for row in rows:
        key = by_hash[row.api_key_hash]
        cell = (row.day, row.provider, row.model, key.id if by_key else None)
        cells[cell] += Usage(
            events=row.events,
            unpriced_events=row.unpriced_events,
            cost=row.cost_total,
            tokens_input=row.tokens_input,
            tokens_output=row.tokens_output,
            tokens_cache_read=row.tokens_cache_read,
            tokens_total=row.tokens_total,
        )
    keys_by_id = {key.id: key for key in keys}
    days: dict[date, list[ModelDay]] = defaultdict(list)
    for (day, provider, model, key_id), usage in sorted(
        cells.items(), key=lambda cell: (*cell[0][:3], cell[0][3] or 0)
    ):
        days[day].append(ModelDay(provider, model, usage, keys_by_id.get(key_id)))
    return UsageSummary(start, end, dict(days))
