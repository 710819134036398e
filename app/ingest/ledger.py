"""Bulk writes to the usage ledger: a priced batch into ``usage_events`` and its rollups.

An event is stored once by its unique ``event_id`` (on PostgreSQL claimed in
``usage_event_ids``, as the partitioned ledger cannot hold a unique index
without the partition key) and the daily and hourly
rollups are bumped only from the rows that were really new, in the caller's
transaction, so a redelivered batch changes nothing and no rollup ever counts
an event twice.

On PostgreSQL the batch goes by COPY into a temporary staging table, then is
appended from it and rolled up from it, or, when it holds an event stored
before, merged (``_insert_postgresql``). No per-row work in SQLAlchemy, and COPY
is the cheapest way in for both PostgreSQL and the worker, which is what lets a
worker keep up with the API. Other databases (the embedded SQLite
default) take the portable path: a multi-row INSERT … ON CONFLICT DO NOTHING
RETURNING and the rollup summed in Python.

Money crosses as decimal strings, never floats. Prices have at most
``MONEY_SCALE`` places and token counts are integers, so every cost fits the
column exactly and PostgreSQL never rounds it.
"""

from __future__ import annotations

import io
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from functools import lru_cache
from typing import Any, NamedTuple

import orjson
import psycopg2
from sqlalchemy import TextClause, func, select, text
from sqlalchemy.dialects import postgresql
from sqlalchemy.exc import DBAPIError, IntegrityError

from app.columns import utcnow
from app.database import execute_dml, quick_read
from app.dialect import insert_for, one_of
from app.extensions import db
from app.ingest.latency import LATENCY_COLUMNS, bucket_of, bucket_sql
from app.ingest.models import (
    NO_TASK_TYPE,
    UNPRICED,
    IngestBatch,
    UsageDaily,
    UsageEvent,
    UsageEventId,
    UsageHourly,
)
from app.ingest.partitions import require_partitions
from app.pricing.dimensions import COLUMNS

# Summed into usage_daily from each new event, beside the counts of events, of those
# unpriced and of those whose usage is flagged (a stream cut off).
ROLLUP_SUMS = (*COLUMNS, "tokens_total", "cost_total")
_ROLLUP_KEY = ("api_key_hash", "day", "provider", "model")
_ROLLUP_COUNTS = ("events", "unpriced_events", "flagged_events")
_ROLLUP_ADDED = (*_ROLLUP_COUNTS, *ROLLUP_SUMS)  # what a new row adds to its day
_COUNTED = f"count(*), count(*) FILTER (WHERE pricing_status = '{UNPRICED}'),\n" + (
    "count(*) FILTER (WHERE usage_flag IS NOT NULL)"
)
_HOURLY_KEY = ("api_key_hash", "hour", "provider", "model", "task_type", "status")
# What a new row adds to its hour: the daily sums, its duration, and one latency bucket.
_HOURLY_ADDED = (
    *_ROLLUP_ADDED,
    "timed_events",
    "execution_ms",
    "timed_tokens_output",
    *LATENCY_COLUMNS,
)


@dataclass(frozen=True)
class Written:
    inserted: int
    unpriced: int


def latest_event_at() -> datetime | None:
    """The timestamp of the latest event stored: new prices start after it."""
    return db.session.scalar(select(func.max(UsageEvent.created_at)))


def claim_batch(batch_id: str, events: int, accepted_at: datetime | None = None) -> bool:
    """Write the batch's receipt; False when the batch was recorded before.

    Taken first in the batch's transaction: a concurrent redelivery of the same
    batch waits on the receipt's key until this one commits, then skips.
    """
    stmt = (
        insert_for(IngestBatch.__table__)
        .values(batch_id=batch_id, events=events, recorded_at=utcnow(), accepted_at=accepted_at)
        .on_conflict_do_nothing(index_elements=["batch_id"])
        .returning(IngestBatch.batch_id)
    )
    return db.session.execute(stmt).first() is not None


def recorded_batches(batch_ids: Sequence[str]) -> set[str]:
    """Which of these batches have a receipt (were recorded); a best-effort read."""
    if not batch_ids:
        return set()
    query = select(IngestBatch.batch_id).where(one_of(IngestBatch.batch_id, "ids"))
    with quick_read() as conn:
        return set(conn.scalars(query, {"ids": list(batch_ids)}))


def stored_ids_column(dialect: str) -> Any:
    """Where a database looks up whether an event id is stored: the partitioned
    ledger's id table on PostgreSQL, the plain table's unique column on SQLite."""
    return UsageEventId.event_id if dialect == "postgresql" else UsageEvent.event_id


def stored_count(event_ids: Sequence[str]) -> int:
    """How many of these event ids the ledger holds, read in the caller's transaction."""
    if not event_ids:
        return 0
    column = stored_ids_column(db.engine.dialect.name)
    query = select(func.count()).select_from(column.table).where(one_of(column, "ids"))
    return db.session.scalar(query, {"ids": list(event_ids)}) or 0


def insert_events(rows: list[EventRow]) -> Written:
    """Insert the new rows of a priced batch and roll them up; duplicates are skipped."""
    if not rows:
        return Written(0, 0)
    if db.engine.dialect.name == "postgresql":
        return _insert_postgresql(rows)
    return insert_rows(rows)


class EventRow(NamedTuple):
    """One priced event as ``usage_events`` stores it; fields are its column names.

    A tuple, so the COPY below unpacks it instead of looking up 30 keys a row.
    A test keeps its fields in step with the model's columns.
    """

    event_id: str
    api_key_hash: str
    execution_id: str | None
    task_type: str | None
    tokens_input: int
    tokens_output: int
    tokens_cache_read: int
    tokens_cache_write: int
    tokens_input_audio: int
    tokens_cache_audio_read: int
    tokens_output_audio: int
    tokens_output_reasoning: int
    tokens_total: int
    usage_extra: dict[str, int] | None
    provider: str
    model: str
    model_cost_input: Decimal | None
    model_cost_output: Decimal | None
    model_cost_cache_read: Decimal | None
    cost_input: Decimal | None
    cost_output: Decimal | None
    cost_total: Decimal | None
    charges: dict[str, Any] | None
    execution_time: Decimal | None
    usage_flag: str | None
    status: str
    pricing_status: str
    created_at: datetime
    received_at: datetime
    metadata: dict[str, Any] | None


# -- PostgreSQL: COPY into a staging table, then append or merge ----------------------------
_STAGED = "usage_events_staged"
_COPIED = EventRow._fields  # the columns the worker COPYs, in the order it writes them
# Staged as whole microseconds since the epoch, not as text: Python formats the
# integer several times faster than an aware datetime, and PostgreSQL turns it
# back exactly with ``_instant``.
_TIMESTAMPS = ("created_at", "received_at")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def _instant(column: str) -> str:
    """A staged timestamp as the timestamptz it stands for.

    ``interval * bigint`` computes in float8, exact for whole microseconds
    below 2**53 (the year 2255).
    """
    return f"(timestamptz 'epoch' + {column} * interval '1 microsecond')"


class _Statements(NamedTuple):
    stage: str  # creates the connection's staging table
    prepared: dict[str, str]  # name: statement, prepared once per connection
    copy: str  # fills it
    claim: TextClause  # claims every staged event id, no conflict allowed
    append: TextClause  # inserts every staged row
    roll_up: TextClause  # adds every staged row to usage_daily and usage_hourly
    merge: TextClause  # claims the ids not stored yet, inserts those rows, rolls them up

    @property
    def prepare(self) -> str:
        return ";".join(f"PREPARE {name} AS {sql}" for name, sql in self.prepared.items())


_PREPARED_MARK = "usage_billing.ledger_prepared"  # in the DBAPI connection's info


def _upsert_sql(table: str, key: tuple[str, ...], added: tuple[str, ...], select_sql: str) -> str:
    """INSERT a rollup's grouped rows, adding to the rows already there.

    Ordered by the key so every worker locks rollup rows in one order: no deadlocks.
    """
    columns = ", ".join((*key, *added, "updated_at"))
    keys = ", ".join(key)
    order = ", ".join(str(i) for i in range(1, len(key) + 1))
    updates = ", ".join(f"{name} = {table}.{name} + excluded.{name}" for name in added)
    return f"""
        INSERT INTO {table} ({columns})
        {select_sql}
        GROUP BY {order} ORDER BY {order}
        ON CONFLICT ({keys}) DO UPDATE SET {updates}, updated_at = excluded.updated_at
    """


def daily_rollup_sql(source: str, created_at: str) -> str:
    """Roll the rows of ``source`` up into ``usage_daily``."""
    sums = ", ".join(f"coalesce(sum({name}), 0)" for name in ROLLUP_SUMS)
    select_sql = f"""
        SELECT api_key_hash, ({created_at} AT TIME ZONE 'UTC')::date, provider, model,
               {_COUNTED}, {sums}, now()
        FROM {source}
    """
    return _upsert_sql("usage_daily", _ROLLUP_KEY, _ROLLUP_ADDED, select_sql)


def hourly_rollup_sql(source: str, created_at: str) -> str:
    """Roll the rows of ``source`` up into ``usage_hourly`` (also the migration's backfill)."""
    sums = ", ".join(f"coalesce(sum({name}), 0)" for name in ROLLUP_SUMS)
    buckets = ", ".join(
        f"count(*) FILTER (WHERE bucket = {index})" for index in range(len(LATENCY_COLUMNS))
    )
    select_sql = f"""
        SELECT api_key_hash, date_trunc('hour', {created_at}, 'UTC'), provider, model,
               coalesce(task_type, '{NO_TASK_TYPE}'), status,
               {_COUNTED}, {sums},
               count(execution_time), coalesce(sum(round(execution_time * 1000)), 0)::bigint,
               coalesce(sum(tokens_output) FILTER (WHERE execution_time IS NOT NULL), 0),
               {buckets}, now()
        FROM (SELECT *, {bucket_sql("execution_time")} AS bucket FROM {source}) AS timed
    """
    return _upsert_sql("usage_hourly", _HOURLY_KEY, _HOURLY_ADDED, select_sql)


@lru_cache(maxsize=1)
def _postgresql_sql() -> _Statements:
    """The staging table's DDL, its COPY, and the statements that write from it.

    Column types come from the ``usage_events`` model, but for ``_TIMESTAMPS``.
    """
    dialect = postgresql.dialect()
    columns = UsageEvent.__table__.columns
    names = ", ".join(_COPIED)
    record = ", ".join(
        f"{name} {'bigint' if name in _TIMESTAMPS else columns[name].type.compile(dialect=dialect)}"
        for name in _COPIED
    )
    values = ", ".join(_instant(name) if name in _TIMESTAMPS else name for name in _COPIED)
    append = f"INSERT INTO usage_events ({names}) SELECT {values} FROM {_STAGED}"
    claim = (
        f"INSERT INTO {UsageEventId.__tablename__} (event_id, created_at)"
        f" SELECT event_id, {_instant('created_at')} FROM {_STAGED}"
    )
    merge = f"""
        WITH claimed AS (
            {claim}
            ON CONFLICT (event_id) DO NOTHING
            RETURNING event_id
        ), new AS (
            {append}
            WHERE event_id IN (SELECT event_id FROM claimed)
            RETURNING api_key_hash, created_at, provider, model, task_type, status,
                      pricing_status, usage_flag, execution_time, {", ".join(ROLLUP_SUMS)}
        ), daily AS ({daily_rollup_sql("new", "created_at")}),
        hourly AS ({hourly_rollup_sql("new", "created_at")})
        SELECT count(*) AS inserted,
               count(*) FILTER (WHERE pricing_status = '{UNPRICED}') AS unpriced
        FROM new
    """
    # The statements every all-new batch runs, prepared once per connection.
    prepared = {
        "ub_ledger_claim": claim,
        "ub_ledger_append": append,
        "ub_ledger_daily": daily_rollup_sql(_STAGED, _instant("created_at")),
        "ub_ledger_hourly": hourly_rollup_sql(_STAGED, _instant("created_at")),
    }
    claim_name, append_name, *rollup_names = prepared
    return _Statements(
        # Temporary: one per connection, emptied by each commit, never WAL-logged.
        stage=f"CREATE TEMP TABLE IF NOT EXISTS {_STAGED} ({record}) ON COMMIT DELETE ROWS",
        prepared=prepared,
        copy=f"COPY {_STAGED} ({names}) FROM STDIN",
        claim=text(f"EXECUTE {claim_name}"),
        append=text(f"EXECUTE {append_name}"),
        roll_up=text(";".join(f"EXECUTE {name}" for name in rollup_names)),
        merge=text(merge),
    )


def staging_cursor(connection: Any) -> Any:
    """A DBAPI cursor on the session's connection, its staging table made and the
    batch's statements prepared on it.

    Prepared once per connection, the statements are parsed and planned once,
    not for every batch: the hourly rollup alone took PostgreSQL 0.5 ms of
    planning per batch of 100, as long as half its execution. A prepared
    statement outlives a rollback (it is not transactional), and PostgreSQL
    analyzes it again by name when the staging table is made again (a
    rolled-back first batch takes its table with it), so it is made once for
    the connection's life; the mark lives with the DBAPI connection, whose
    replacement prepares them again.
    """
    sql = _postgresql_sql()
    dbapi = connection.connection
    cursor = dbapi.cursor()
    cursor.execute(sql.stage)
    if not dbapi.info.get(_PREPARED_MARK):
        cursor.execute(sql.prepare)
        dbapi.info[_PREPARED_MARK] = True
    return cursor


_NULL = "\\N"  # COPY's NULL
# Stands for NULL until the batch is escaped: validation lets NUL into no string
# (it is not printable) and JSON writes it escaped, so no value can hold one.
_ABSENT = "\x00"


def _json(value: Any) -> str:
    return orjson.dumps(value).decode()


def _copy_text(rows: list[EventRow]) -> str:
    """The rows as COPY's text format, one line each, columns in ``_COPIED`` order.

    Each row is one f-string over its unpacked fields, NULL written as NUL; the
    batch is then escaped in two passes, not field by field (per-field escaping
    costs the worker most of its encoding time): backslashes,
    COPY's escape character, are doubled (validation lets no tab, newline or
    carriage return into a string, and JSON escapes them), then NUL becomes
    ``\\N``. ``Decimal`` goes with ``str`` (``!s``: its ``format`` is slower),
    a form PostgreSQL's numeric reads exactly; timestamps as ``_TIMESTAMPS``
    says, the batch's one receipt time computed once.
    """
    received: dict[datetime, int] = {}
    lines = []
    for (
        event_id,
        api_key_hash,
        execution_id,
        task_type,
        tokens_input,
        tokens_output,
        tokens_cache_read,
        tokens_cache_write,
        tokens_input_audio,
        tokens_cache_audio_read,
        tokens_output_audio,
        tokens_output_reasoning,
        tokens_total,
        usage_extra,
        provider,
        model,
        model_cost_input,
        model_cost_output,
        model_cost_cache_read,
        cost_input,
        cost_output,
        cost_total,
        charges,
        execution_time,
        usage_flag,
        status,
        pricing_status,
        created_at,
        received_at,
        metadata,
    ) in rows:
        stamp = received.get(received_at)
        if stamp is None:
            stamp = received[received_at] = (received_at - _EPOCH) // _MICROSECOND
        lines.append(
            f"{event_id}\t{api_key_hash}\t{_ABSENT if execution_id is None else execution_id}\t"
            f"{_ABSENT if task_type is None else task_type}\t{tokens_input}\t{tokens_output}\t"
            f"{tokens_cache_read}\t{tokens_cache_write}\t{tokens_input_audio}\t"
            f"{tokens_cache_audio_read}\t{tokens_output_audio}\t{tokens_output_reasoning}\t"
            f"{tokens_total}\t{_ABSENT if usage_extra is None else _json(usage_extra)}\t"
            f"{provider}\t{model}\t"
            f"{_ABSENT if model_cost_input is None else model_cost_input!s}\t"
            f"{_ABSENT if model_cost_output is None else model_cost_output!s}\t"
            f"{_ABSENT if model_cost_cache_read is None else model_cost_cache_read!s}\t"
            f"{_ABSENT if cost_input is None else cost_input!s}\t"
            f"{_ABSENT if cost_output is None else cost_output!s}\t"
            f"{_ABSENT if cost_total is None else cost_total!s}\t"
            f"{_ABSENT if charges is None else _json(charges)}\t"
            f"{_ABSENT if execution_time is None else execution_time!s}\t"
            f"{_ABSENT if usage_flag is None else usage_flag}\t"
            f"{status}\t{pricing_status}\t{(created_at - _EPOCH) // _MICROSECOND}\t{stamp}\t"
            f"{_ABSENT if metadata is None else _json(metadata)}\n"
        )
    return "".join(lines).replace("\\", "\\\\").replace(_ABSENT, _NULL)


def _insert_postgresql(rows: list[EventRow]) -> Written:
    """COPY the batch into the staging table, then append it, or merge it when it must.

    COPY parses a batch for a fraction of what a JSON or VALUES parameter costs
    PostgreSQL and psycopg2; the staging table lets the insert and the
    rollup run on it as statements. The API turns away events it finds stored,
    so nearly every batch is all new: its ids are claimed in ``usage_event_ids``
    with a plain INSERT, in a savepoint, then its rows appended to the
    partitioned ledger and rolled up from the staging table, which costs
    PostgreSQL less than ``ON CONFLICT``'s speculative insert feeding the rollup
    from ``RETURNING``. A batch holding an event stored before (or being stored
    by another worker) fails the id table's primary key; it goes back to the
    savepoint and is merged instead, which inserts and rolls up only the events
    whose ids it could claim.
    """
    sql = _postgresql_sql()
    connection = db.session.connection()
    require_partitions(connection, [row.created_at for row in rows])
    data = _copy_text(rows)
    try:
        cursor = staging_cursor(connection)
        # In one read: psycopg2 reads 8 KB at a time unless told.
        cursor.copy_expert(sql.copy, io.StringIO(data), size=len(data) + 1)
    except psycopg2.Error as exc:  # as SQLAlchemy's own statements raise it
        raise DBAPIError.instance(sql.copy, None, exc, psycopg2.Error) from exc
    try:
        with db.session.begin_nested():
            db.session.execute(sql.claim)
    except IntegrityError:
        result = db.session.execute(sql.merge).one()
        return Written(inserted=result.inserted, unpriced=result.unpriced)
    appended = execute_dml(sql.append).rowcount
    db.session.execute(sql.roll_up)
    # As PostgreSQL counted them: the caller checks it against the batch.
    return Written(inserted=appended, unpriced=sum(row.pricing_status == UNPRICED for row in rows))


# -- Any database: INSERT … RETURNING, rollups summed here ----------------------------------
def insert_rows(rows: list[EventRow]) -> Written:
    """``insert_events`` on any database, without COPY: the embedded default's path,
    and PostgreSQL's for a row at a time (its staging table lives until commit)."""
    table: Any = UsageEvent.__table__
    stmt: Any
    if db.engine.dialect.name == "postgresql":
        rows = _claim(rows)
        if not rows:
            return Written(0, 0)
        require_partitions(db.session.connection(), [row.created_at for row in rows])
        stmt = postgresql.insert(table)
    else:
        stmt = insert_for(table).on_conflict_do_nothing(index_elements=["event_id"])
    stmt = stmt.returning(
        *(
            table.c[name]
            for name in ("api_key_hash", "created_at", "provider", "model", "task_type")
        ),
        *(table.c[name] for name in ("status", "pricing_status", "usage_flag", "execution_time")),
        *(table.c[name] for name in ROLLUP_SUMS),
    )
    inserted = db.session.execute(stmt, [row._asdict() for row in rows]).all()
    roll_up_rows(inserted)
    return Written(
        inserted=len(inserted), unpriced=sum(1 for r in inserted if r.pricing_status == UNPRICED)
    )


def _claim(rows: list[EventRow]) -> list[EventRow]:
    """The rows whose ids this transaction could claim in ``usage_event_ids``: not stored."""
    stmt = (
        postgresql.insert(UsageEventId)
        .on_conflict_do_nothing(index_elements=["event_id"])
        .returning(UsageEventId.event_id)
    )
    values = [{"event_id": row.event_id, "created_at": row.created_at} for row in rows]
    claimed = set(db.session.scalars(stmt, values))
    return [row for row in rows if row.event_id in claimed]


def _daily_key(row: Any) -> tuple[Any, ...]:
    return (row.api_key_hash, row.created_at.astimezone(UTC).date(), row.provider, row.model)


def _hourly_key(row: Any) -> tuple[Any, ...]:
    hour = row.created_at.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
    return (
        row.api_key_hash,
        hour,
        row.provider,
        row.model,
        row.task_type or NO_TASK_TYPE,
        row.status,
    )


def _add_timing(totals: dict[str, Any], row: Any) -> None:
    if row.execution_time is None:
        return
    totals["timed_events"] += 1
    totals["execution_ms"] += int(row.execution_time * 1000)
    totals["timed_tokens_output"] += row.tokens_output
    totals[LATENCY_COLUMNS[bucket_of(row.execution_time)]] += 1


def _rollup(
    rows: Iterable[Any],
    key_names: tuple[str, ...],
    key_of: Any,
    added: tuple[str, ...],
) -> list[dict[str, Any]]:
    totals: dict[tuple[Any, ...], dict[str, Any]] = defaultdict(lambda: dict.fromkeys(added, 0))
    timed = "timed_events" in added
    for row in rows:
        bucket = totals[key_of(row)]
        bucket["events"] += 1
        bucket["unpriced_events"] += row.pricing_status == UNPRICED
        bucket["flagged_events"] += row.usage_flag is not None
        for name in ROLLUP_SUMS:
            bucket[name] += getattr(row, name) or 0
        if timed:
            _add_timing(bucket, row)
    now = utcnow()
    # Sorted so concurrent workers lock rollup rows in one order and never deadlock.
    return [
        {**dict(zip(key_names, key, strict=True)), "updated_at": now, **values}
        for key, values in sorted(totals.items())
    ]


def roll_up_rows(rows: Sequence[Any]) -> None:
    """Add stored events (rows with the rollups' columns) to both rollups."""
    _upsert(
        db.session,
        UsageDaily.__table__,
        _ROLLUP_ADDED,
        _rollup(rows, _ROLLUP_KEY, _daily_key, _ROLLUP_ADDED),
    )
    roll_up_hourly(rows, db.session)


def roll_up_hourly(rows: Sequence[Any], into: Any) -> None:
    """Add stored events to the hourly rollup, through a session or a connection."""
    rollups = _rollup(rows, _HOURLY_KEY, _hourly_key, _HOURLY_ADDED)
    _upsert(into, UsageHourly.__table__, _HOURLY_ADDED, rollups)


def _upsert(into: Any, table: Any, added: tuple[str, ...], rollups: list[dict[str, Any]]) -> None:
    if not rollups:
        return
    stmt = insert_for(table)
    update = {name: table.c[name] + stmt.excluded[name] for name in added}
    update["updated_at"] = stmt.excluded.updated_at
    into.execute(
        stmt.on_conflict_do_update(index_elements=list(table.primary_key.columns), set_=update),
        rollups,
    )
