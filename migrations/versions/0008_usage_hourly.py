"""usage_hourly: the hourly rollup analytics read, backfilled from the events kept;
usage_daily's rows with unpriced events indexed for the operators' page

New table, filled from ``usage_events`` in the migration (on PostgreSQL one
INSERT … SELECT: about a minute per 10 million events, without locking the events
against reads; on SQLite in Python). Run it, as every migration, before the
workers of the new release start: a worker of the old release would store events
without their hourly rows.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-29 02:30:00

"""

from collections import defaultdict
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from alembic import op

from app.columns import Money, UTCDateTime
from app.ingest.latency import LATENCY_COLUMNS, bucket_of, bucket_sql

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade():
    counts = [
        "events",
        "unpriced_events",
        "tokens_input",
        "tokens_output",
        "tokens_cache_read",
        "tokens_total",
    ]
    op.create_table(
        "usage_hourly",
        sa.Column("api_key_hash", sa.String(length=64), nullable=False),
        sa.Column("hour", UTCDateTime(timezone=True), nullable=False),
        sa.Column("provider", sa.String(length=64), nullable=False),
        sa.Column("model", sa.String(length=128), nullable=False),
        sa.Column("task_type", sa.String(length=64), nullable=False),
        sa.Column("status", sa.String(length=32), nullable=False),
        *(sa.Column(name, sa.BigInteger(), nullable=False) for name in counts),
        sa.Column("cost_total", Money(), nullable=False),
        sa.Column("timed_events", sa.BigInteger(), nullable=False),
        sa.Column("execution_ms", sa.BigInteger(), nullable=False),
        sa.Column("timed_tokens_output", sa.BigInteger(), nullable=False),
        *(sa.Column(name, sa.BigInteger(), nullable=False) for name in LATENCY_COLUMNS),
        sa.Column("updated_at", UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("api_key_hash", "hour", "provider", "model", "task_type", "status"),
        postgresql_with={"fillfactor": 70},
    )
    op.create_index("ix_usage_hourly_hour", "usage_hourly", ["hour"])
    op.create_index(
        "ix_usage_daily_unpriced",
        "usage_daily",
        ["day"],
        postgresql_where=sa.text("unpriced_events > 0"),
        sqlite_where=sa.text("unpriced_events > 0"),
    )
    _backfill()


# The rollup as it stood at this revision: later ones add columns to it, so the
# backfill must not run the ledger's code of the day.
_SUMS = ("tokens_input", "tokens_output", "tokens_cache_read", "tokens_total", "cost_total")
_KEY = ("api_key_hash", "hour", "provider", "model", "task_type", "status")
_ADDED = (
    "events",
    "unpriced_events",
    *_SUMS,
    "timed_events",
    "execution_ms",
    "timed_tokens_output",
    *LATENCY_COLUMNS,
)


def _backfill() -> None:
    bind = op.get_bind()
    if bind.dialect.name == "postgresql":
        sums = ", ".join(f"coalesce(sum({name}), 0)" for name in _SUMS)
        buckets = ", ".join(
            f"count(*) FILTER (WHERE bucket = {index})" for index in range(len(LATENCY_COLUMNS))
        )
        op.execute(f"""
            INSERT INTO usage_hourly ({", ".join((*_KEY, *_ADDED, "updated_at"))})
            SELECT api_key_hash, date_trunc('hour', created_at, 'UTC'), provider, model,
                   coalesce(task_type, ''), status,
                   count(*), count(*) FILTER (WHERE pricing_status = 'unpriced'), {sums},
                   count(execution_time), coalesce(sum(round(execution_time * 1000)), 0)::bigint,
                   coalesce(sum(tokens_output) FILTER (WHERE execution_time IS NOT NULL), 0),
                   {buckets}, now()
            FROM (SELECT *, {bucket_sql("execution_time")} AS bucket FROM usage_events) AS timed
            GROUP BY 1, 2, 3, 4, 5, 6
        """)
        return
    typed = {"created_at": UTCDateTime(), "hour": UTCDateTime(), "cost_total": Money()}
    typed.update(updated_at=UTCDateTime(), execution_time=sa.Numeric(12, 3))
    read = ("task_type", "pricing_status", "api_key_hash", "provider", "model", "status")
    events = sa.table(
        "usage_events",
        *(sa.column(name, typed.get(name)) for name in ("created_at", *read, *_SUMS)),
        sa.column("execution_time", typed["execution_time"]),
    )
    totals: dict[tuple, dict[str, Any]] = defaultdict(lambda: dict.fromkeys(_ADDED, 0))
    for row in bind.execute(sa.select(events)).mappings():
        hour = row["created_at"].replace(minute=0, second=0, microsecond=0)
        key = (row["api_key_hash"], hour, row["provider"], row["model"])
        bucket = totals[(*key, row["task_type"] or "", row["status"])]
        bucket["events"] += 1
        bucket["unpriced_events"] += row["pricing_status"] == "unpriced"
        for name in _SUMS:
            bucket[name] += row[name] or 0
        seconds = row["execution_time"]
        if seconds is not None:
            bucket["timed_events"] += 1
            bucket["execution_ms"] += int(seconds * 1000)
            bucket["timed_tokens_output"] += row["tokens_output"]
            bucket[LATENCY_COLUMNS[bucket_of(seconds)]] += 1
    columns = (*_KEY, *_ADDED, "updated_at")
    hourly = sa.table("usage_hourly", *(sa.column(n, typed.get(n)) for n in columns))
    now = datetime.now(UTC)
    rows = [
        {**dict(zip(_KEY, key, strict=True)), **added, "updated_at": now}
        for key, added in totals.items()
    ]
    if rows:
        bind.execute(hourly.insert(), rows)


def downgrade():
    op.drop_index("ix_usage_daily_unpriced", table_name="usage_daily")
    op.drop_index("ix_usage_hourly_hour", table_name="usage_hourly")
    op.drop_table("usage_hourly")
