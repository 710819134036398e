"""Recording a batch of events: validate, price, insert once, roll up.

The batch is written in one transaction: its receipt in ``ingest_batches``
(when the outbox gave it an id), the new events, their daily rollup, and any
event that failed validation, parked in ``rejected_events``. A redelivered
batch finds its receipt and changes nothing; an event sent twice in different
batches is still stored once, by ``event_id`` (``app/models/ledger.py``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from flask import current_app
from sqlalchemy import delete, select

from app.errors import ValidationError
from app.extensions import db
from app.models import RejectedEvent
from app.models.events import PRICED, UNPRICED
from app.models.ledger import EventRow, claim_batch, insert_events
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
    already_recorded: bool = False


def event_limits() -> EventLimits:
    settings = current_app.config["SETTINGS"]
    return EventLimits(
        max_age=timedelta(days=settings.max_event_age_days),
        max_future=timedelta(seconds=settings.max_event_future_seconds),
        max_metadata_bytes=settings.max_metadata_bytes,
    )


def _row(event: EventIn, book: PriceBook, received_at: datetime) -> EventRow:
    price = book.price_at(event.provider, event.model, event.created_at)
    if price is None:
        prices = costs = (None, None, None)
    else:
        cost = cost_of(event.tokens_input, event.tokens_output, event.tokens_cache_read, price)
        prices = (price.input, price.output, price.cache_read)
        costs = (cost.input, cost.output, cost.total)
    return EventRow(
        event.event_id,
        event.api_key_hash,
        event.execution_id,
        event.task_type,
        event.tokens_input,
        event.tokens_output,
        event.tokens_cache_read,
        event.tokens_input + event.tokens_output,
        event.provider,
        event.model,
        *prices,
        *costs,
        event.execution_time,
        event.status,
        UNPRICED if price is None else PRICED,
        event.created_at,
        received_at,
        event.metadata,
    )


def reject(raw: Any, error: ValidationError) -> dict[str, Any]:
    event_id = raw.get("event_id") if isinstance(raw, dict) else None
    return {
        "event_id": event_id if isinstance(event_id, str) else None,
        "field": error.field,
        "reason": error.message,
    }


def record_events(
    raw_events: list[Any], now: datetime | None = None, batch_id: str | None = None
) -> RecordResult:
    """Store each valid event exactly once; park invalid ones in ``rejected_events``."""
    if batch_id is not None and not claim_batch(batch_id, len(raw_events)):
        db.session.rollback()
        return RecordResult(duplicates=len(raw_events), already_recorded=True)
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
    book = price_book.get()
    written = insert_events([_row(event, book, now) for event in valid.values()])
    result.inserted, result.unpriced = written.inserted, written.unpriced
    result.duplicates += len(valid) - written.inserted
    db.session.commit()
    if result.rejected or result.unpriced:
        log.warning(
            "events parked or unpriced",
            extra={"rejected": len(result.rejected), "unpriced": result.unpriced},
        )
    return result


def park_batch(raw_events: list[Any], error: Exception, batch_id: str | None = None) -> None:
    """Keep a batch that failed for an unexpected reason, for an operator to replay.

    The batch's receipt is written with it: it is kept, so the outbox must not
    send it again.
    """
    reason = f"{type(error).__name__}: {error}"[:500]
    if batch_id is not None:
        claim_batch(batch_id, len(raw_events))
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


def replay_rejected(limit: int) -> RecordResult:
    """Record parked events again, after the cause is fixed; they leave the park.

    In one transaction the parked rows are deleted and their payloads recorded:
    events that are valid now are stored (or found stored already), the others
    are parked again with today's reason.
    """
    parked = db.session.execute(
        select(RejectedEvent.id, RejectedEvent.payload).order_by(RejectedEvent.id).limit(limit)
    ).all()
    if not parked:
        return RecordResult()
    db.session.execute(delete(RejectedEvent).where(RejectedEvent.id.in_([p.id for p in parked])))
    return record_events([p.payload for p in parked])
