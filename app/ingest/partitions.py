"""The ledger's weekly partitions on PostgreSQL: made ahead, found for every batch,
dropped whole past retention.

``usage_events`` is range-partitioned on ``created_at``, one partition per UTC
week (Monday to Monday), named ``usage_events_wYYYYMMDD`` after its Monday.
Retention then drops a week in one catalog operation instead of deleting its
rows one by one (``app/ingest/retention.py``).

A partition is made as a plain table and then attached: ``ATTACH PARTITION``
takes only SHARE UPDATE EXCLUSIVE on ``usage_events``, which inserts do not
wait for, where ``CREATE TABLE … PARTITION OF`` would take ACCESS EXCLUSIVE and
stop ingest behind any long read. An event never finds no partition: start-up
and a daily Beat job make the weeks of the accepted window and
``PARTITION_WEEKS_AHEAD`` more, and a worker makes any week its batch needs
that is still missing, in the batch's own transaction (a batch recorded with an
old ``now``, or after weeks without Beat), before it inserts.

SQLite, the embedded default, keeps a plain table: nothing here runs on it.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from datetime import time as clock

from sqlalchemy import Connection, Engine, text

from app.config import Settings
from app.extensions import db

log = logging.getLogger("usage_billing.ingest")

WEEK = timedelta(days=7)
_PARENT = "usage_events"
_PREFIX = f"{_PARENT}_w"
_CREATE_LOCK_ID = 0x75B1_0002  # one maker of partitions at a time, whatever the process

# The weeks this process has seen attached, by database (a process that migrates
# another database, or a test session, meets more than one). A week in here is
# assumed to stay: retention never drops one an accepted event can still fall in.
_attached: dict[str, set[datetime]] = defaultdict(set)


def _seen(engine: Engine) -> set[datetime]:
    return _attached[str(engine.url)]


def week_of(moment: datetime) -> datetime:
    """The Monday 00:00 UTC that starts the week holding ``moment``."""
    day = moment.astimezone(UTC).date()
    return datetime.combine(day - timedelta(days=day.weekday()), clock(), tzinfo=UTC)


@dataclass(frozen=True, order=True)
class Partition:
    """One week of ``usage_events``: rows with ``start <= created_at < end``."""

    start: datetime

    @property
    def end(self) -> datetime:
        return self.start + WEEK

    @property
    def name(self) -> str:
        return f"{_PREFIX}{self.start:%Y%m%d}"

    @classmethod
    def named(cls, name: str) -> Partition:
        return cls(datetime.strptime(name.removeprefix(_PREFIX), "%Y%m%d").replace(tzinfo=UTC))


def _children(conn: Connection, detaching: bool) -> list[Partition]:
    names = conn.execute(
        text(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
            f" WHERE i.inhparent = '{_PARENT}'::regclass AND i.inhdetachpending = :detaching"
        ),
        {"detaching": detaching},
    ).scalars()
    return sorted(Partition.named(name) for name in names)


def partitions(conn: Connection) -> list[Partition]:
    """The weeks attached to ``usage_events``, oldest first."""
    return _children(conn, detaching=False)


def detach_pending(conn: Connection) -> list[Partition]:
    """Weeks whose detach was interrupted half way: already out of the ledger's reads."""
    return _children(conn, detaching=True)


def weeks_between(first: datetime, last: datetime) -> list[datetime]:
    weeks, week = [], week_of(first)
    while week <= last:
        weeks.append(week)
        week += WEEK
    return weeks


def create_partitions(conn: Connection, weeks: Iterable[datetime]) -> list[str]:
    """Attach a partition for each of ``weeks`` that has none, in the caller's transaction.

    Makers take one transaction-scoped advisory lock and read the catalog
    after it, so two processes never make the same week.
    """
    conn.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": _CREATE_LOCK_ID})
    attached = {p.start for p in partitions(conn)}
    created = []
    for week in sorted(set(weeks) - attached):
        part = Partition(week)
        conn.execute(
            text(
                f"CREATE TABLE {part.name}"
                f" (LIKE {_PARENT} INCLUDING DEFAULTS INCLUDING CONSTRAINTS)"
            )
        )
        conn.execute(
            text(
                f"ALTER TABLE {_PARENT} ATTACH PARTITION {part.name}"
                f" FOR VALUES FROM ('{part.start.isoformat()}') TO ('{part.end.isoformat()}')"
            )
        )
        created.append(part.name)
    _seen(conn.engine).update(attached, weeks)
    return created


def ensure_partitions(conn: Connection, now: datetime, max_age_days: int, ahead: int) -> list[str]:
    """Attach every week an event accepted now could fall in, and ``ahead`` weeks more."""
    first = now - timedelta(days=max_age_days + 1)
    return create_partitions(conn, weeks_between(first, now + ahead * WEEK))


def make_partitions(settings: Settings, now: datetime) -> list[str]:
    """``ensure_partitions`` in a transaction of its own: at start-up and by the daily
    job, so a worker rarely has to make one. Nothing on SQLite."""
    if db.engine.dialect.name != "postgresql":
        return []
    with db.engine.begin() as conn:
        created = ensure_partitions(
            conn, now, settings.max_event_age_days, settings.partition_weeks_ahead
        )
    if created:
        log.info("ledger partitions made", extra={"partitions": created})
    return created


def drop_partition(part: Partition) -> None:
    """Detach a week and drop it, without stopping ingest.

    ``DETACH PARTITION … CONCURRENTLY`` takes SHARE UPDATE EXCLUSIVE on
    ``usage_events`` (inserts go on) and waits for the transactions that could
    still see the week; it cannot run in a transaction block, hence autocommit.
    The detached table is then dropped on its own lock. A detach interrupted
    half way is finished first (``FINALIZE``).
    """
    with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        if part in detach_pending(conn):
            conn.execute(text(f"ALTER TABLE {_PARENT} DETACH PARTITION {part.name} FINALIZE"))
        elif part in partitions(conn):
            conn.execute(text(f"ALTER TABLE {_PARENT} DETACH PARTITION {part.name} CONCURRENTLY"))
        conn.execute(text(f"DROP TABLE IF EXISTS {part.name}"))
    _seen(db.engine).discard(part.start)


def require_partitions(conn: Connection, instants: Sequence[datetime]) -> None:
    """Before a batch's insert: make the weeks its events' ``instants`` fall in exist.

    Costs nothing once this process has seen them attached, which is every batch
    but the first of each new week.
    """
    weeks = weeks_between(min(instants), max(instants))
    if not _seen(conn.engine).issuperset(weeks):
        create_partitions(conn, weeks)


def forget_attached() -> None:
    """After an insert found no partition (dropped behind this process's back): look
    at the catalog again on the batch's retry."""
    _attached.clear()
