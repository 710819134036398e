"""Recording a batch of events: validate, price, insert once, roll up.

One statement inserts the whole batch with ON CONFLICT (event_id) DO NOTHING
and returns only the rows that were new; the daily rollup is bumped from those
rows in the same transaction. A redelivered batch therefore changes nothing,
and the rollup can never count an event twice.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

from flask import current_app

from app.errors import ValidationError
from app.extensions import db
from app.models import RejectedEvent, UsageDaily, UsageEvent
from app.models.dialect import insert_for
from app.models.events import PRICED, UNPRICED
from app.models.types import utcnow
from app.pricing.cost import cost_of
from app.services.prices import PriceBook, price_book
from app.services.validation import EventIn, EventLimits, validate_event

log = logging.getLogger("usage_billing.ingest")


@dataclass
class RecordResult:
    inserted: int = 0
    duplicates: int = 0
    rejected: list[dict[str, Any]] = field(default_factory=list)
    unpriced: int = 0


def event_limits() -> EventLimits:
    settings = current_app.config["SETTINGS"]
    return EventLimits(
        max_age=timedelta(days=settings.max_event_age_days),
        max_future=timedelta(seconds=settings.max_event_future_seconds),
        max_metadata_bytes=settings.max_metadata_bytes,
    )


def _row(event: EventIn, book: PriceBook, received_at: datetime) -> dict[str, Any]:
    price = book.price_at(event.provider, event.model, event.created_at)
    row: dict[str, Any] = {
        "event_id": event.event_id,
        "api_key_hash": event.api_key_hash,
        "execution_id": event.execution_id,
        "task_type": event.task_type,
        "tokens_input": event.tokens_input,
        "tokens_output": event.tokens_output,
        "tokens_cache_read": event.tokens_cache_read,
        "tokens_total": event.tokens_input + event.tokens_output,
        "provider": event.provider,
        "model": event.model,
        "execution_time": event.execution_time,
        "status": event.status,
        "created_at": event.created_at,
        "received_at": received_at,
        "metadata": event.metadata,
        "model_cost_input": None,
        "model_cost_output": None,
        "model_cost_cache_read": None,
        "cost_input": None,
        "cost_output": None,
        "cost_total": None,
        "pricing_status": UNPRICED,
    }
    if price is not None:
        cost = cost_of(event.tokens_input, event.tokens_output, event.tokens_cache_read, price)
        row.update(
            model_cost_input=price.input,
            model_cost_output=price.output,
            model_cost_cache_read=price.cache_read,
            cost_input=cost.input,
            cost_output=cost.output,
            cost_total=cost.total,
            pricing_status=PRICED,
        )
    return row


def _rollup(rows: Iterable[Any]) -> list[dict[str, Any]]:
    totals: dict[tuple[str, date, str, str], dict[str, Any]] = defaultdict(
        lambda: {
            "events": 0,
            "unpriced_events": 0,
            "tokens_input": 0,
            "tokens_output": 0,
            "tokens_cache_read": 0,
            "tokens_total": 0,
            "cost_total": Decimal(0),
        }
    )
    for row in rows:
        key = (row.api_key_hash, row.created_at.astimezone(UTC).date(), row.provider, row.model)
        bucket = totals[key]
        bucket["events"] += 1
        bucket["unpriced_events"] += row.pricing_status == UNPRICED
        bucket["tokens_input"] += row.tokens_input
        bucket["tokens_output"] += row.tokens_output
        bucket["tokens_cache_read"] += row.tokens_cache_read
        bucket["tokens_total"] += row.tokens_total
        bucket["cost_total"] += row.cost_total or 0
    now = utcnow()
    # Sorted so concurrent workers lock rollup rows in one order and never deadlock.
    return [
        {"api_key_hash": k[0], "day": k[1], "provider": k[2], "model": k[3], "updated_at": now, **v}
        for k, v in sorted(totals.items())
    ]


def _upsert_rollups(rollups: list[dict[str, Any]]) -> None:
    if not rollups:
        return
    table = UsageDaily.__table__
    stmt = insert_for(table)
    summed = (
        "events",
        "unpriced_events",
        "tokens_input",
        "tokens_output",
        "tokens_cache_read",
        "tokens_total",
        "cost_total",
    )
    update = {name: table.c[name] + stmt.excluded[name] for name in summed}
    update["updated_at"] = stmt.excluded.updated_at
    db.session.execute(
        stmt.on_conflict_do_update(index_elements=list(table.primary_key.columns), set_=update),
        rollups,
    )


def reject(raw: Any, error: ValidationError) -> dict[str, Any]:
    event_id = raw.get("event_id") if isinstance(raw, dict) else None
    return {
        "event_id": event_id if isinstance(event_id, str) else None,
        "field": error.field,
        "reason": error.message,
    }


def record_events(raw_events: list[Any], now: datetime | None = None) -> RecordResult:
    """Store each valid event exactly once; park invalid ones in ``rejected_events``."""
    now = now or utcnow()
    limits = event_limits()
    result = RecordResult()
    valid: dict[str, EventIn] = {}
    for raw in raw_events:
        try:
            event = validate_event(raw, now, limits)
        except ValidationError as error:
            result.rejected.append(reject(raw, error))
            db.session.add(RejectedEvent(payload=raw, **result.rejected[-1]))
            continue
        if event.event_id in valid:
            result.duplicates += 1
        valid[event.event_id] = event
    if valid:
        book = price_book.get()
        rows = [_row(event, book, now) for event in valid.values()]
        table = UsageEvent.__table__
        stmt = (
            insert_for(table)
            .on_conflict_do_nothing(index_elements=["event_id"])
            .returning(
                table.c.api_key_hash,
                table.c.created_at,
                table.c.provider,
                table.c.model,
                table.c.pricing_status,
                table.c.tokens_input,
                table.c.tokens_output,
                table.c.tokens_cache_read,
                table.c.tokens_total,
                table.c.cost_total,
            )
        )
        inserted = db.session.execute(stmt, rows).all()
        _upsert_rollups(_rollup(inserted))
        result.inserted = len(inserted)
        result.duplicates += len(rows) - len(inserted)
        result.unpriced = sum(1 for r in inserted if r.pricing_status == UNPRICED)
    db.session.commit()
    if result.rejected or result.unpriced:
        log.warning(
            "events parked or unpriced",
            extra={"rejected": len(result.rejected), "unpriced": result.unpriced},
        )
    return result


def park_batch(raw_events: list[Any], error: Exception) -> None:
    """Keep a batch that failed for an unexpected reason, for an operator to replay."""
    reason = f"{type(error).__name__}: {error}"[:500]
    db.session.add_all(
        RejectedEvent(
            event_id=raw.get("event_id") if isinstance(raw, dict) else None,
            field=None,
            reason=reason,
            payload=raw,
        )
        for raw in raw_events
    )
    db.session.commit()
    log.error("batch parked", extra={"events": len(raw_events), "reason": reason})
