"""Recording batches of usage events."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from celery import shared_task
from flask import current_app

from app.budgets.admission import counters_for
from app.budgets.spend import Estimates, settle_batch
from app.customers.services import count_unattributed
from app.extensions import db
from app.ingest.batch_store import BatchStore, batch_store
from app.ingest.ledger import recorded_batches
from app.ingest.recording import record_events
from app.ingest.validation import EventLimits
from app.schedule import ALERTS_TASK

log = logging.getLogger("usage_billing.ingest")


@shared_task(
    name="ingest.record_events",
    acks_late=True,
    # Whatever escapes recording is not the events' fault (those are parked one by
    # one inside it): a lost connection, a batch found incomplete, or a bug. The
    # batch waits and is tried again; it is never dropped or parked for it.
    autoretry_for=(Exception,),
    retry_backoff=True,
    retry_backoff_max=60,
    retry_jitter=True,
    max_retries=None,
)
def record_events_task(
    events: list[dict[str, Any]] | None, batch_id: str | None = None
) -> dict[str, int]:
    """Store a batch; any failure retries the whole batch.

    ``events`` is None when they wait in the batch store under ``batch_id``
    (app/ingest/batch_store.py). Retrying the whole batch is safe: a recorded batch has
    a receipt (``batch_id``) and rows already stored are skipped by event id.
    """
    store = batch_store(current_app)
    if events is None:
        events = store.take(batch_id) if store is not None and batch_id else None
        if events is None:
            return _events_gone(batch_id)
    try:
        limits = EventLimits.from_settings(current_app.config["SETTINGS"])
        result = record_events(events, limits, batch_id=batch_id)
    except Exception:
        db.session.rollback()
        log.exception("batch %s not recorded; it will be tried again", batch_id)
        raise
    finally:
        db.session.remove()
    _recorded(store, batch_id)
    _attribute(events)
    _settle_budgets(events)
    return {
        "inserted": result.inserted,
        "duplicates": result.duplicates,
        "rejected": len(result.rejected),
    }


def _attribute(events: list[dict[str, Any]]) -> None:
    """Count the batch's events no customer can be billed for; never fails the batch."""
    try:
        count_unattributed(events)
    except Exception:  # noqa: BLE001 - the batch stands; only a count is missed
        log.exception("unattributed events of a recorded batch not counted")
    finally:
        db.session.remove()


def _settle_budgets(events: list[dict[str, Any]]) -> None:
    """Bring the budgets of the batch's keys up to date; never fails the batch, which
    is recorded: a later settle or the minute's rebuild job catches up."""
    counters = counters_for(current_app)
    if counters is None:
        return
    try:
        defaults = Estimates.from_settings(current_app.config["SETTINGS"])
        if settle_batch(counters, events, datetime.now(UTC), defaults):
            current_app.extensions["celery"].send_task(ALERTS_TASK)  # deliver them now
    except Exception:  # noqa: BLE001 - the batch stands; the budgets catch up later
        db.session.rollback()
        log.exception("budgets not settled for a recorded batch; the next settle catches up")
    finally:
        db.session.remove()


def _events_gone(batch_id: str | None) -> dict[str, int]:
    """A message whose events are no longer in the batch store."""
    if batch_id is not None and recorded_batches([batch_id]):
        # Recorded, and its events deleted, by a worker that died before it
        # acknowledged the message: this is the message coming back.
        return {"inserted": 0, "duplicates": 0, "rejected": 0, "already_recorded": 1}
    # No receipt is written, so the outbox sends the batch again.
    log.warning("batch %s: its events are gone from the batch store", batch_id)
    return {"inserted": 0, "duplicates": 0, "rejected": 0, "missing": 1}


def _recorded(store: BatchStore | None, batch_id: str | None) -> None:
    """The batch has its receipt: its events can leave the batch store."""
    if store is not None and batch_id is not None:
        store.drop(batch_id)
