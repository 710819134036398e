"""Retention: delete raw events past their retention, never an unreported day's.

Deletes go in bounded batches (one short transaction each, by an index on the
time column) so a week of events never holds locks long enough to stall
ingest. The daily rollups stay: they are the billing history.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta

from sqlalchemy import Column, delete, select

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
    reported_until = datetime.combine(last_reported_day + timedelta(days=1), time(), tzinfo=UTC)
    return min(now - timedelta(days=retention_days), reported_until)


def _delete_before(key: Column, when: Column, cutoff: datetime, batch_size: int) -> int:
    deleted = 0
    while True:
        keys = select(key).where(when < cutoff).limit(batch_size).scalar_subquery()
        result = db.session.execute(delete(key.table).where(key.in_(keys)))
        db.session.commit()
        deleted += result.rowcount or 0
        if (result.rowcount or 0) < batch_size:
            return deleted


def delete_events_before(cutoff: datetime, batch_size: int) -> int:
    return _delete_before(UsageEvent.id, UsageEvent.created_at, cutoff, batch_size)


def delete_receipts_before(cutoff: datetime, batch_size: int) -> int:
    return _delete_before(IngestBatch.batch_id, IngestBatch.recorded_at, cutoff, batch_size)
