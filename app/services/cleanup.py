"""Retention: delete raw events past their retention, never an unreported day's.

Deletes go in bounded batches (one short transaction each, by the
``created_at`` index) so a week of events never holds locks long enough to
stall ingest. The daily rollups stay: they are the billing history.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta

from sqlalchemy import delete, select

from app.extensions import db
from app.models import UsageEvent


def cleanup_cutoff(
    now: datetime, retention_days: int, last_reported_day: date | None
) -> datetime | None:
    """Events strictly before this instant may go; None when nothing may."""
    if last_reported_day is None:
        return None
    reported_until = datetime.combine(last_reported_day + timedelta(days=1), time(), tzinfo=UTC)
    return min(now - timedelta(days=retention_days), reported_until)


def delete_events_before(cutoff: datetime, batch_size: int) -> int:
    deleted = 0
    while True:
        ids = select(UsageEvent.id).where(UsageEvent.created_at < cutoff).limit(batch_size)
        result = db.session.execute(
            delete(UsageEvent).where(UsageEvent.id.in_(ids.scalar_subquery()))
        )
        db.session.commit()
        deleted += result.rowcount or 0
        if (result.rowcount or 0) < batch_size:
            return deleted
