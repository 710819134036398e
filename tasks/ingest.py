"""Recording batches of usage events."""

from __future__ import annotations

from typing import Any

from celery import shared_task
from sqlalchemy.exc import InterfaceError, OperationalError

from app.extensions import db
from app.services.recording import park_batch, record_events


@shared_task(
    name="ingest.record_events",
    acks_late=True,
    autoretry_for=(OperationalError, InterfaceError),
    retry_backoff=True,
    retry_backoff_max=60,
    retry_jitter=True,
    max_retries=None,
)
def record_events_task(events: list[dict[str, Any]], batch_id: str | None = None) -> dict[str, int]:
    """Store a batch; a lost database connection rolls back and retries the whole batch.

    Retrying the whole batch is safe: a recorded batch has a receipt (``batch_id``)
    and rows already stored are skipped by event id. Validation failures are not
    errors here; they are parked per event. Any other failure parks the whole
    batch in ``rejected_events`` rather than dropping it.
    """
    try:
        result = record_events(events, batch_id=batch_id)
    except (OperationalError, InterfaceError):
        db.session.rollback()
        raise
    except Exception as exc:
        db.session.rollback()
        park_batch(events, exc, batch_id)
        raise
    finally:
        db.session.remove()
    return {
        "inserted": result.inserted,
        "duplicates": result.duplicates,
        "rejected": len(result.rejected),
    }
