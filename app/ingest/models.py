"""The usage ledger: one row per metered call, its daily rollup, and rejects.

``usage_events`` is the record of truth; ``usage_daily`` and ``usage_hourly``
are maintained in the same transaction as each insert (only for rows that were
really new), so the usage endpoints and the daily report read a few thousand
rollup rows instead of millions of events.
"""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    CheckConstraint,
    Column,
    Date,
    Index,
    Integer,
    Numeric,
    String,
    Table,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from app.columns import AnyJSON, Money, UTCDateTime, utcnow
from app.extensions import Model, db
from app.ingest.latency import LATENCY_COLUMNS
from app.pricing.dimensions import PART_COLUMNS

PRICED = "priced"
UNPRICED = "unpriced"


class UsageEvent(Model):
    """One metered call, priced. On PostgreSQL the table is partitioned by week of
    ``created_at`` (``app/ingest/partitions.py``), its primary key is ``(id, created_at)``
    and ``usage_event_ids`` keeps event ids unique; on SQLite it is a plain table with a
    unique ``event_id``. ``id`` alone, from one sequence, is unique either way."""

    __tablename__ = "usage_events"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    event_id: Mapped[str] = mapped_column(String(128), unique=True)
    api_key_hash: Mapped[str] = mapped_column(String(64))
    execution_id: Mapped[str | None] = mapped_column(String(128))
    task_type: Mapped[str | None] = mapped_column(String(64))
    tokens_input: Mapped[int] = mapped_column(BigInteger)
    tokens_output: Mapped[int] = mapped_column(BigInteger)
    tokens_cache_read: Mapped[int] = mapped_column(BigInteger, default=0)
    # The other parts of tokens_input and tokens_output (app/pricing/dimensions.py).
    tokens_cache_write: Mapped[int] = mapped_column(BigInteger, server_default="0")
    tokens_input_audio: Mapped[int] = mapped_column(BigInteger, server_default="0")
    tokens_cache_audio_read: Mapped[int] = mapped_column(BigInteger, server_default="0")
    tokens_output_audio: Mapped[int] = mapped_column(BigInteger, server_default="0")
    tokens_output_reasoning: Mapped[int] = mapped_column(BigInteger, server_default="0")
    tokens_total: Mapped[int] = mapped_column(BigInteger)
    # Any other usage key of the price source the call reported (web searches, 1-hour
    # cache writes, image tokens, …): charged, kept here, not broken out in the rollups.
    usage_extra: Mapped[dict[str, int] | None] = mapped_column(JSON)
    provider: Mapped[str] = mapped_column(String(64))
    model: Mapped[str] = mapped_column(String(128))
    model_cost_input: Mapped[Decimal | None] = mapped_column(Money)
    model_cost_output: Mapped[Decimal | None] = mapped_column(Money)
    model_cost_cache_read: Mapped[Decimal | None] = mapped_column(Money)
    cost_input: Mapped[Decimal | None] = mapped_column(Money)
    cost_output: Mapped[Decimal | None] = mapped_column(Money)
    cost_total: Mapped[Decimal | None] = mapped_column(Money)
    # What each priced unit was charged ({usage key: [units, rate, amount]}), when the
    # three rates above do not tell it alone (a cache write, audio, a fee per request).
    charges: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    execution_time: Mapped[Decimal | None] = mapped_column(Numeric(12, 3))
    # Why the usage may fall short of what the provider billed: a stream cut off by
    # the client before its usage, or one that ended without any. Operators see these.
    usage_flag: Mapped[str | None] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(32))
    pricing_status: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    metadata_: Mapped[dict[str, Any] | None] = mapped_column("metadata", JSON)

    __table_args__ = (
        CheckConstraint("tokens_input >= 0", name="ck_usage_events_tokens_input"),
        CheckConstraint("tokens_output >= 0", name="ck_usage_events_tokens_output"),
        CheckConstraint(
            "tokens_cache_read >= 0 AND tokens_cache_read <= tokens_input",
            name="ck_usage_events_tokens_cache_read",
        ),
        CheckConstraint(
            "tokens_total = tokens_input + tokens_output", name="ck_usage_events_tokens_total"
        ),
        CheckConstraint(
            "pricing_status IN ('priced', 'unpriced')", name="ck_usage_events_pricing_status"
        ),
        Index("ix_usage_events_key_created", "api_key_hash", "created_at"),
        Index("ix_usage_events_created", "created_at"),
    )


class UsageEventId(Model):
    """The event ids of the partitioned ledger (PostgreSQL), unique across its weeks.

    PostgreSQL only enforces a unique index on a partitioned table when it holds
    the partition key, which would let one ``event_id`` in twice under two
    timestamps. The worker claims each id here, in the batch's transaction,
    before it inserts the event. An id is kept while a copy of its event could
    still be accepted: the weekly cleanup trims ids whose event is older than
    ``MAX_EVENT_AGE_DAYS`` plus a day. SQLite's plain table dedupes by its own
    unique index and leaves this one empty.
    """

    __tablename__ = "usage_event_ids"

    event_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)

    __table_args__ = (Index("ix_usage_event_ids_created", "created_at"),)


class UsageDaily(Model):
    """Per key, UTC day, provider and model: what the usage page and the report read."""

    __tablename__ = "usage_daily"

    api_key_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    day: Mapped[date] = mapped_column(Date, primary_key=True)
    provider: Mapped[str] = mapped_column(String(64), primary_key=True)
    model: Mapped[str] = mapped_column(String(128), primary_key=True)
    events: Mapped[int] = mapped_column(BigInteger)
    unpriced_events: Mapped[int] = mapped_column(BigInteger)
    # Events whose usage may fall short (usage_events.usage_flag): what operators chase.
    flagged_events: Mapped[int] = mapped_column(BigInteger, server_default="0")
    tokens_input: Mapped[int] = mapped_column(BigInteger)
    tokens_output: Mapped[int] = mapped_column(BigInteger)
    tokens_cache_read: Mapped[int] = mapped_column(BigInteger)
    tokens_cache_write: Mapped[int] = mapped_column(BigInteger, server_default="0")
    tokens_input_audio: Mapped[int] = mapped_column(BigInteger, server_default="0")
    tokens_cache_audio_read: Mapped[int] = mapped_column(BigInteger, server_default="0")
    tokens_output_audio: Mapped[int] = mapped_column(BigInteger, server_default="0")
    tokens_output_reasoning: Mapped[int] = mapped_column(BigInteger, server_default="0")
    tokens_total: Mapped[int] = mapped_column(BigInteger)
    cost_total: Mapped[Decimal] = mapped_column(Money)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    # Free room on each page keeps the rollup's updates HOT (migration 0003).
    __table_args__ = (
        Index("ix_usage_daily_day", "day"),
        # Only the rows with unpriced events: what the operators' page lists (migration 0008).
        Index(
            "ix_usage_daily_unpriced",
            "day",
            postgresql_where=text("unpriced_events > 0"),
            sqlite_where=text("unpriced_events > 0"),
        ),
        # Only the rows with flagged events, likewise (migration 0012).
        Index(
            "ix_usage_daily_flagged",
            "day",
            postgresql_where=text("flagged_events > 0"),
            sqlite_where=text("flagged_events > 0"),
        ),
        {"postgresql_with": {"fillfactor": 70}},
    )


# The hourly rollup's dimensions beyond the daily one's; "no task type" is stored as
# "" (a key column cannot be NULL) and shown as null.
NO_TASK_TYPE = ""


class UsageHourly(Model):
    """Per key, UTC hour, provider, model, task type and status: what analytics read.

    Besides the daily rollup's sums it keeps what performance figures need:
    the calls that reported a duration, their summed milliseconds and output
    tokens (for tokens per second), and a count per latency bucket
    (``app/ingest/latency.py``) from which percentiles are estimated. Kept for
    ``USAGE_HOURLY_RETENTION_DAYS``; the daily rollup keeps the whole history.
    """

    __table__ = Table(
        "usage_hourly",
        db.metadata,
        Column("api_key_hash", String(64), primary_key=True),
        Column("hour", UTCDateTime, primary_key=True),
        Column("provider", String(64), primary_key=True),
        Column("model", String(128), primary_key=True),
        Column("task_type", String(64), primary_key=True),
        Column("status", String(32), primary_key=True),
        Column("events", BigInteger, nullable=False),
        Column("unpriced_events", BigInteger, nullable=False),
        Column("flagged_events", BigInteger, nullable=False, server_default="0"),
        Column("tokens_input", BigInteger, nullable=False),
        Column("tokens_output", BigInteger, nullable=False),
        Column("tokens_cache_read", BigInteger, nullable=False),
        *(
            Column(name, BigInteger, nullable=False, server_default="0")
            for name in PART_COLUMNS[1:]
        ),
        Column("tokens_total", BigInteger, nullable=False),
        Column("cost_total", Money, nullable=False),
        Column("timed_events", BigInteger, nullable=False),
        Column("execution_ms", BigInteger, nullable=False),
        Column("timed_tokens_output", BigInteger, nullable=False),
        *(Column(name, BigInteger, nullable=False) for name in LATENCY_COLUMNS),
        Column("updated_at", UTCDateTime, nullable=False, default=utcnow),
        Index("ix_usage_hourly_hour", "hour"),
        postgresql_with={"fillfactor": 70},
    )


class IngestBatch(Model):
    """One row per batch a worker has recorded, written in the batch's own transaction.

    It is the receipt the outbox waits for before it deletes a published spool
    segment (a broker can lose a message it has handed to a worker that dies), and
    it lets a redelivered batch be skipped whole.
    """

    __tablename__ = "ingest_batches"

    batch_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    events: Mapped[int] = mapped_column(Integer)
    recorded_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # When the API accepted the batch's first event (None: not known, as for a batch
    # replayed from a dead process's spool): the ingest lag runs from here.
    accepted_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    __table_args__ = (Index("ix_ingest_batches_recorded", "recorded_at"),)


class RejectedEvent(Model):
    """An event a worker could not store: kept, with the reason, for operators to replay."""

    __tablename__ = "rejected_events"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    event_id: Mapped[str | None] = mapped_column(String(128))
    field: Mapped[str | None] = mapped_column(String(64))
    reason: Mapped[str] = mapped_column(String(500))
    payload: Mapped[Any] = mapped_column(AnyJSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
