"""Retention: delete raw events past their retention, never an unreported day's.

Deletes go in bounded batches (one short transaction each, by an index on the
time column), with rests between them (``CLEANUP_DUTY_CYCLE``), so deleting a
week of events never holds locks long or takes the CPU ingest needs. The daily
rollups stay: they are the billing history.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from datetime import time as clock

from sqlalchemy import Column, delete, select

from app.config import Settings
from app.extensions import db
from app.models import IngestBatch, UsageEvent

# Batch receipts only matter while an outbox may still wait for one (minutes, or
# the length of an outage); a week is ample, and a late re-send is still stored
# once by event id.
RECEIPT_RETENTION = timedelta(days=7)


def cleanup_cutoff(
    now: datetime, retention_days: int, last_reported_day: date | None
) -> datetime | None:
    """Events strictly before this instant may go; None when nothing may."""
    if last_reported_day is None:
        return None
    reported_until = datetime.combine(last_reported_day + timedelta(days=1), clock(), tzinfo=UTC)
    return min(now - timedelta(days=retention_days), reported_until)


@dataclass(frozen=True)
class Pace:
    """How hard a cleanup may press: rows per transaction, and the share of its
    time it spends deleting (it rests for the rest, so ingest keeps the database)."""

    batch_size: int
    duty_cycle: float


def cleanup_pace(settings: Settings) -> Pace:
    return Pace(settings.cleanup_batch_size, settings.cleanup_duty_cycle)


def _delete_before(key: Column, when: Column, cutoff: datetime, pace: Pace) -> int:
    deleted = 0
    while True:
        started = time.monotonic()
        keys = select(key).where(when < cutoff).limit(pace.batch_size).scalar_subquery()
        result = db.session.execute(delete(key.table).where(key.in_(keys)))
        db.session.commit()
        deleted += result.rowcount or 0
        if (result.rowcount or 0) < pace.batch_size:
            return deleted
        busy = time.monotonic() - started
        time.sleep(busy * (1 - pace.duty_cycle) / pace.duty_cycle)


def delete_events_before(cutoff: datetime, pace: Pace) -> int:
    return _delete_before(UsageEvent.id, UsageEvent.created_at, cutoff, pace)


def delete_receipts_before(cutoff: datetime, pace: Pace) -> int:
    return _delete_before(IngestBatch.batch_id, IngestBatch.recorded_at, cutoff, pace)
