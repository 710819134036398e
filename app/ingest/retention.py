"""Retention: delete raw events past their retention, never an unreported day's.

Which events may go is billing's to say (``app.billing.settled``): each
cutoff instant with the API keys whose events before it may go. Events of any
other key stay.

On PostgreSQL the ledger goes a week at a time: a weekly partition wholly
past retention is dropped when every key with events in it may lose them up to
its end (``drop_partitions``); one that holds a day that may not go stays, and
only the events that may go are deleted from it, row by row. Events so stay up
to six days past ``USAGE_RETENTION_DAYS``, never less. The id table behind
the ledger's uniqueness is trimmed past the accepted age window. SQLite deletes
rows up to each key's cutoff exactly.

Deletes go in bounded batches (one short transaction each, by an index on the
time column), with rests between them (``CLEANUP_DUTY_CYCLE``), so deleting a
week of events never holds locks long or takes the CPU ingest needs. The daily
rollups stay: they are the billing history. The hourly rollup's detail goes
after ``USAGE_HOURLY_RETENTION_DAYS``, a day of hours per transaction.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, delete, func, select

from app.config import Settings
from app.database import execute_dml
from app.extensions import db
from app.ingest.models import IngestBatch, UsageDaily, UsageEvent, UsageEventId, UsageHourly
from app.ingest.partitions import Partition, drop_partition, partitions, week_of
from app.progress import Progress, unwatched

_KEYS_PER_DELETE = 500

# Batch receipts only matter while an outbox may still wait for one (minutes, or
# the length of an outage); a week is ample, and a late re-send is still stored
# once by event id.
RECEIPT_RETENTION = timedelta(days=7)


@dataclass(frozen=True)
class Pace:
    """How hard a cleanup may press: rows per transaction, and the share of its
    time it spends deleting (it rests for the rest, so ingest keeps the database)."""

    batch_size: int
    duty_cycle: float

    def rest_after(self, started: float) -> None:
        """Rest so that the work since ``started`` (``time.monotonic``) is the duty cycle."""
        busy = time.monotonic() - started
        time.sleep(busy * (1 - self.duty_cycle) / self.duty_cycle)


def cleanup_pace(settings: Settings) -> Pace:
    return Pace(settings.cleanup_batch_size, settings.cleanup_duty_cycle)


def _delete_before(
    key: Any, when: Any, cutoff: datetime, pace: Pace, *where: ColumnElement[bool]
) -> int:
    deleted = 0
    while True:
        started = time.monotonic()
        keys = select(key).where(when < cutoff, *where).limit(pace.batch_size).scalar_subquery()
        # The time again outside: on the partitioned ledger it spares the other weeks.
        result = execute_dml(delete(key.table).where(key.in_(keys), when < cutoff))
        db.session.commit()
        deleted += result.rowcount or 0
        if (result.rowcount or 0) < pace.batch_size:
            return deleted
        pace.rest_after(started)


def delete_events_before(
    cutoffs: dict[datetime, list[str]], pace: Pace, progress: Progress = unwatched
) -> int:
    """Delete each key's events before its cutoff, in bounded batches."""
    deleted = done = 0
    total = sum(len(keys) for keys in cutoffs.values())
    for cutoff, key_hashes in cutoffs.items():
        for start in range(0, len(key_hashes), _KEYS_PER_DELETE):
            keys = key_hashes[start : start + _KEYS_PER_DELETE]
            deleted += _delete_before(
                UsageEvent.id,
                UsageEvent.created_at,
                cutoff,
                pace,
                UsageEvent.api_key_hash.in_(keys),
            )
            done += len(keys)
            progress(done, total)
    return deleted


def whole_weeks(cutoffs: dict[datetime, list[str]]) -> dict[datetime, list[str]]:
    """Each cutoff brought back to the start of its week: on the partitioned ledger rows
    are deleted only from weeks wholly past it, which a later run drops whole."""
    weeks: dict[datetime, list[str]] = {}
    for cutoff, keys in cutoffs.items():
        weeks.setdefault(week_of(cutoff), []).extend(keys)
    return weeks


def droppable_partitions(cutoffs: dict[datetime, list[str]], horizon: datetime) -> list[Partition]:
    """The weeks ending by ``horizon`` whose every key may lose its events up to the week's
    end. The keys of a week are read from the daily rollup (written in the same
    transaction as the events), not from the events."""
    may_go_until = {key: cutoff for cutoff, keys in cutoffs.items() for key in keys}
    droppable = []
    for part in partitions(db.session.connection()):
        if part.end > horizon:
            break
        keys = db.session.scalars(
            select(UsageDaily.api_key_hash)
            .where(UsageDaily.day >= part.start.date(), UsageDaily.day < part.end.date())
            .distinct()
        )
        if all(key in may_go_until and may_go_until[key] >= part.end for key in keys):
            droppable.append(part)
    db.session.rollback()
    return droppable


def drop_partitions(cutoffs: dict[datetime, list[str]], horizon: datetime) -> list[str]:
    """Drop every week ``droppable_partitions`` allows, oldest first."""
    parts = droppable_partitions(cutoffs, horizon)
    for part in parts:
        drop_partition(part)
    return [part.name for part in parts]


def delete_ids_before(cutoff: datetime, pace: Pace) -> int:
    """Trim the id table: no copy of an event this old can be accepted any more."""
    return _delete_before(UsageEventId.event_id, UsageEventId.created_at, cutoff, pace)


def delete_receipts_before(cutoff: datetime, pace: Pace) -> int:
    return _delete_before(IngestBatch.batch_id, IngestBatch.recorded_at, cutoff, pace)


def delete_hours_before(cutoff: datetime, pace: Pace) -> int:
    """Delete the hourly rollup's rows before ``cutoff``, one day of hours at a time."""
    hour = UsageHourly.__table__.c.hour
    first = db.session.scalar(select(func.min(hour)))
    deleted = 0
    while first is not None and first < cutoff:
        started = time.monotonic()
        until = min(first + timedelta(days=1), cutoff)
        result = execute_dml(delete(UsageHourly).where(hour < until))
        db.session.commit()
        deleted += result.rowcount or 0
        first = until if until < cutoff else None
        pace.rest_after(started)
    return deleted
