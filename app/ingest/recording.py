"""Recording a batch of events: validate, price, insert once, roll up.

The batch is written in one transaction: its receipt in ``ingest_batches``
(when the outbox gave it an id), the new events, their daily rollup, and any
event that failed validation, parked in ``rejected_events``. A redelivered
batch finds its receipt and changes nothing; an event sent twice in different
batches is still stored once, by ``event_id`` (``app/ingest/ledger.py``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.exc import DataError, DBAPIError, IntegrityError, StatementError

from app.columns import utcnow
from app.errors import LedgerMismatch, ValidationError
from app.extensions import db
from app.ingest.ledger import (
    EventRow,
    Written,
    claim_batch,
    insert_events,
    insert_rows,
    stored_count,
)
from app.ingest.models import PRICED, UNPRICED, RejectedEvent
from app.ingest.partitions import forget_attached
from app.ingest.validation import EventIn, EventLimits, read_message
from app.observability.metrics import (
    BATCHES_RECORDED,
    EVENTS_PARKED,
    EVENTS_RECORDED,
    EVENTS_UNPRICED,
    INGEST_LAG,
    observe_all,
)
from app.pricing.book import PriceBook, price_book
from app.pricing.cost import lines_json
from app.progress import Progress, unwatched

log = logging.getLogger("usage_billing.ingest")


@dataclass
class RecordResult:
    inserted: int = 0
    duplicates: int = 0
    rejected: list[dict[str, Any]] = field(default_factory=list)
    unpriced: int = 0
    already_recorded: bool = False


def _row(event: EventIn, book: PriceBook, received_at: datetime) -> EventRow:
    cost = book.cost(event.provider, event.model, event.created_at, event.counts())
    if cost is None:
        prices: tuple[Decimal | None, Decimal | None, Decimal | None] = (None, None, None)
        costs: tuple[Decimal | None, Decimal | None, Decimal | None] = (None, None, None)
        charges = None
    else:
        prices = (cost.input_rate, cost.output_rate, cost.cache_read_rate)
        costs = (cost.input, cost.output, cost.total)
        charges = None if cost.lines is None else lines_json(cost.lines)
    return EventRow(
        event.event_id,
        event.api_key_hash,
        event.execution_id,
        event.task_type,
        *event[4:12],  # the usage, in the ledger's order of its dimensions
        event.tokens_input + event.tokens_output,
        event.usage_extra,
        event.provider,
        event.model,
        *prices,
        *costs,
        charges,
        event.execution_time,
        event.usage_flag,
        event.status,
        UNPRICED if cost is None else PRICED,
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
    raw_events: list[Any],
    limits: EventLimits,
    *,
    now: datetime | None = None,
    batch_id: str | None = None,
    accepted_at: datetime | None = None,
) -> RecordResult:
    """Store each valid event exactly once; park invalid ones in ``rejected_events``.

    The receipt, the events and the parked ones commit together or not at all.
    The receipt commits only once the batch's events are accounted for in the
    same transaction: inserted, as the database counted them, or found stored
    before (``LedgerMismatch`` otherwise, and the task retries). An exception
    that escapes is never the events' fault (a lost connection, a bug): the
    batch is retried, not parked. ``accepted_at``: when the API accepted the batch's
    first event, kept on the receipt (the ingest lag /admin shows).
    """
    now = now or utcnow()
    result = RecordResult()
    valid: dict[str, tuple[EventIn, Any]] = {}
    parked: list[tuple[Any, dict[str, Any]]] = []
    for raw in raw_events:
        try:
            event = read_message(raw, now, limits)
        except ValidationError as error:
            parked.append((raw, reject(raw, error)))
            continue
        if event.event_id in valid:
            result.duplicates += 1
        valid[event.event_id] = (event, raw)
    if batch_id is not None and not claim_batch(batch_id, len(raw_events), accepted_at):
        if stored_count(list(valid)) == len(valid):
            db.session.rollback()
            return RecordResult(duplicates=len(raw_events), already_recorded=True)
        # A receipt without its events, which only a release without this check
        # could write: record them now; those stored are skipped by event id.
        log.error("batch %s has a receipt without all its events; recording them", batch_id)
    book = price_book.get()
    rows = []
    for event, raw in valid.values():
        try:
            rows.append(_row(event, book, now))
        except ArithmeticError as exc:  # a cost no column can hold: this event's own fault
            parked.append((raw, _failure(event.event_id, exc)))
        except ValueError as exc:  # usage the model's prices cannot take apart (the source's)
            parked.append((raw, _failure(event.event_id, exc, field="usage")))
    written, failed = _insert(rows)
    parked.extend((valid[event_id][1], _failure(event_id, exc)) for event_id, exc in failed.items())
    for raw, rejected in parked:
        result.rejected.append(rejected)
        db.session.add(RejectedEvent(payload=raw, **rejected))
    result.inserted, result.unpriced = written.inserted, written.unpriced
    stored_before = len(rows) - len(failed) - written.inserted
    result.duplicates += stored_before
    if stored_before:
        # The database stored fewer than the batch holds: the rest must have been
        # stored before, and every one must be there before the receipt commits.
        _check_stored(batch_id, [row.event_id for row in rows if row.event_id not in failed])
    db.session.commit()
    _count(result, rows, failed)
    if result.rejected or result.unpriced:
        log.warning(
            "events parked or unpriced",
            extra={"rejected": len(result.rejected), "unpriced": result.unpriced},
        )
    return result


def _count(result: RecordResult, rows: list[EventRow], failed: dict[str, Exception]) -> None:
    """The committed batch in the metrics: what it stored, and each event's lag."""
    BATCHES_RECORDED.inc()
    EVENTS_RECORDED.inc(result.inserted)
    EVENTS_UNPRICED.inc(result.unpriced)
    for rejected in result.rejected:
        EVENTS_PARKED.labels(rejected["field"] or "event").inc()
    committed = utcnow()
    observe_all(
        INGEST_LAG,
        (
            max((committed - row.created_at).total_seconds(), 0.0)
            for row in rows
            if row.event_id not in failed
        ),
    )


def _insert(rows: list[EventRow]) -> tuple[Written, dict[str, Exception]]:
    """Insert the batch in one go; if the database refuses an event's values, one by one.

    A value the schema refuses (out of a column's range, a CHECK) is that
    event's fault and must not hold back the others: the batch is inserted again
    row by row, each in a savepoint, and the rows refused come back to be parked
    with the database's reason. Any other error (the connection) propagates.
    """
    try:
        with db.session.begin_nested():
            return insert_events(rows), {}
    except (StatementError, OverflowError) as exc:
        _raise_unless_refused(exc)
    inserted = unpriced = 0
    failed: dict[str, Exception] = {}
    for row in rows:
        try:
            with db.session.begin_nested():
                written = insert_rows([row])
        except (StatementError, OverflowError) as exc:
            _raise_unless_refused(exc)
            failed[row.event_id] = exc
            continue
        inserted += written.inserted
        unpriced += written.unpriced
    return Written(inserted, unpriced), failed


def _raise_unless_refused(exc: StatementError | OverflowError) -> None:
    """Re-raise unless the database (or the driver, binding it) refused a value: SQLite's
    driver raises ``OverflowError`` for an integer past 64 bits (a cost past what the
    embedded default's money column holds), PostgreSQL a ``DataError``.

    An event with no partition to go to is the ledger's fault, not the event's:
    the batch is retried, and its retry makes the partition.
    """
    if isinstance(exc, OverflowError):
        return
    if isinstance(exc, DBAPIError) and not isinstance(exc, (DataError, IntegrityError)):
        raise exc
    if "no partition of relation" in str(exc.orig):
        forget_attached()
        raise exc


def _failure(event_id: str, exc: Exception, field: str | None = None) -> dict[str, Any]:
    return {"event_id": event_id, "field": field, "reason": f"{type(exc).__name__}: {exc}"[:500]}


def _check_stored(batch_id: str | None, event_ids: list[str]) -> None:
    """Raise unless every one of ``event_ids`` is stored, in this transaction."""
    found = stored_count(event_ids)
    if found != len(event_ids):
        raise LedgerMismatch(
            f"batch {batch_id}: {found} of its {len(event_ids)} events found stored; not committed"
        )


REPLAY_TASK = "ingest.replay_parked"  # replay_rejected on a worker (an operator's action)


def replay_rejected(
    limit: int, limits: EventLimits, progress: Progress = unwatched, chunk: int = 500
) -> RecordResult:
    """Record up to ``limit`` parked events again, after the cause is fixed; they leave the park.

    The parked events are taken in chunks, oldest first, each chunk in one
    transaction: its rows are deleted and their payloads recorded. Events valid
    now are stored (or found stored already), the others are parked again with
    today's reason, behind those taken, so a replay never meets them twice.
    """
    ids = db.session.scalars(select(RejectedEvent.id).order_by(RejectedEvent.id).limit(limit)).all()
    total = RecordResult()
    for start in range(0, len(ids), chunk):
        taken = ids[start : start + chunk]
        payloads = db.session.scalars(
            select(RejectedEvent.payload)
            .where(RejectedEvent.id.in_(taken))
            .order_by(RejectedEvent.id)
        ).all()
        db.session.execute(delete(RejectedEvent).where(RejectedEvent.id.in_(taken)))
        result = record_events(list(payloads), limits)
        total.inserted += result.inserted
        total.duplicates += result.duplicates
        total.unpriced += result.unpriced
        total.rejected.extend(result.rejected)
        progress(start + len(taken), len(ids))
    return total
