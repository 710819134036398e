"""One call at a time: a customer's recent calls, or the one it asks for by execution id,
each with what it cost and why (the tokens of each kind × the rate it was charged).

The why is what the event stored when it was priced, never a price looked up
again: the lines of a call the price source priced unit by unit (cache writes,
audio, fees per request: ``charges``), else its three flat rates applied to its
uncached input, cache reads and output, exactly as ``app.pricing.cost.cost_of``
charged them. So a call reads the same after prices change.

A metered call's event id is ``exec-<execution id>`` (``app.ingest.meter``). On
PostgreSQL the claim table holds every event id with its instant, so looking one up
is two index reads (the claim, then the event in its partition), however many
events there are; SQLite's ledger has its own unique index on the id. An event a
service posted under an id of its own is found by its ``execution_id`` among the
range's events of the caller's keys (no index of its own: one would cost every
event a write).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Annotated, Any

from pydantic import Field
from sqlalchemy import Select, select

from app.analytics.answers import KeyShown, TokenCounts
from app.analytics.queries import DateRange, Filters
from app.analytics.usage import day_start, key_json
from app.contract import Answer, Day, Instant, Money
from app.customers.models import ApiKey
from app.extensions import db
from app.ingest.models import UsageEvent, UsageEventId
from app.pricing.dimensions import COLUMNS
from app.shapes import Text

MOST_CALLS = 100
# Filters by name and the event's column each applies to.
_FILTERED = {
    "model": UsageEvent.model,
    "provider": UsageEvent.provider,
    "task_type": UsageEvent.task_type,
    "status": UsageEvent.status,
}


class CallsQuery(DateRange, Filters):
    """``GET /v1/billing/calls``: the range's latest calls, or one by its execution id."""

    execution_id: Annotated[str, Text(128)] | None = Field(
        default=None, description="the call's execution id (or its event id)"
    )
    limit: int = Field(default=50, ge=1, le=MOST_CALLS, description="how many, latest first")


class CallLine(Answer):
    """One part of a call's cost: so many units at a rate (USD per unit)."""

    unit: str  # the price source's usage key: input_tokens, cache_read_tokens, requests…
    units: Decimal
    rate: Money
    amount: Money


class Call(TokenCounts):
    event_id: str
    execution_id: str | None
    created_at: Instant
    provider: str
    model: str
    task_type: str | None
    status: str
    key: KeyShown
    tokens_total: int
    pricing_status: str  # priced, or unpriced (the model had no price at the call's time)
    cost: Money | None
    lines: list[CallLine]  # empty when unpriced


class CallsAnswer(Answer):
    start_date: Day
    end_date: Day
    execution_id: str | None
    calls: list[Call]


@dataclass(frozen=True)
class CallsRequest:
    start: date
    end: date
    filters: dict[str, tuple[Any, ...]]
    execution_id: str | None
    limit: int


def lines_of(event: UsageEvent) -> list[dict[str, Any]]:
    """Why the call cost what it did, from what its event stored when priced."""
    if event.cost_total is None:
        return []
    if event.charges:
        return [
            {"unit": unit, "units": Decimal(str(units)), "rate": rate, "amount": amount}
            for unit, (units, rate, amount) in event.charges.items()
        ]
    input_rate, output_rate = event.model_cost_input, event.model_cost_output
    assert input_rate is not None and output_rate is not None
    cache_rate = event.model_cost_cache_read
    cached = event.tokens_cache_read
    parts = [
        ("input_tokens", event.tokens_input - cached, input_rate),
        ("cache_read_tokens", cached, input_rate if cache_rate is None else cache_rate),
        ("output_tokens", event.tokens_output, output_rate),
    ]
    return [
        {"unit": unit, "units": Decimal(units), "rate": rate, "amount": units * rate}
        for unit, units, rate in parts
        if units
    ]


def recent_calls(keys: Sequence[ApiKey], wanted: CallsRequest) -> list[dict[str, Any]]:
    """The calls of ``keys`` in the range (latest first), filtered, or the one asked for."""
    by_hash = {key.key_hash: key for key in keys}
    wanted_keys = wanted.filters.get("key")
    hashes = [k.key_hash for k in keys if wanted_keys is None or k.id in wanted_keys]
    if not hashes:
        return []
    query = select(UsageEvent).where(
        UsageEvent.api_key_hash.in_(hashes),
        UsageEvent.created_at >= day_start(wanted.start),
        UsageEvent.created_at < day_start(wanted.end + timedelta(days=1)),
    )
    for name, column in _FILTERED.items():
        if name in wanted.filters:
            query = query.where(column.in_(wanted.filters[name]))
    query = query.order_by(UsageEvent.created_at.desc(), UsageEvent.id.desc()).limit(wanted.limit)
    if wanted.execution_id is None:
        events = list(db.session.scalars(query))
    else:
        events = _by_execution_id(query, wanted.execution_id)
    return [_call(e, by_hash[e.api_key_hash]) for e in events]


def _by_execution_id(query: Select[UsageEvent], execution_id: str) -> list[UsageEvent]:
    """A metered call by its event id (``exec-<id>``, or the id itself) through the
    indexes; else, for events a service posted under ids of its own, by the column,
    within the range's events."""
    ids = (f"exec-{execution_id}", execution_id)
    found: list[UsageEvent] = []
    instants = _claimed_at(ids) if db.engine.dialect.name == "postgresql" else None
    if instants is None or instants:  # on PostgreSQL, the partitions' instants first
        by_id = query.where(UsageEvent.event_id.in_(ids))
        if instants:
            by_id = by_id.where(UsageEvent.created_at.in_(instants))
        found = list(db.session.scalars(by_id))
    return found or list(db.session.scalars(query.where(UsageEvent.execution_id == execution_id)))


def _call(e: UsageEvent, key: ApiKey) -> dict[str, Any]:
    return {
        "event_id": e.event_id,
        "execution_id": e.execution_id,
        "created_at": e.created_at,
        "provider": e.provider,
        "model": e.model,
        "task_type": e.task_type,
        "status": e.status,
        "key": key_json(key),
        **{column: getattr(e, column) for column in COLUMNS},
        "tokens_total": e.tokens_total,
        "pricing_status": e.pricing_status,
        "cost": e.cost_total,
        "lines": lines_of(e),
    }


def _claimed_at(event_ids: Sequence[str]) -> list[datetime]:
    """When each of these event ids was claimed (an event's own instant)."""
    return list(
        db.session.scalars(
            select(UsageEventId.created_at).where(UsageEventId.event_id.in_(event_ids))
        )
    )
