"""usage_events range-partitioned by week on PostgreSQL; usage_event_ids keeps event ids unique

PostgreSQL: the table is rebuilt as a partitioned one and its rows copied, in
the migration's one transaction. It holds ACCESS EXCLUSIVE on ``usage_events``
throughout: workers wait (or retry) and the API skips its duplicate check until
it commits; the API keeps accepting into its spool. Measured on this machine:
6.7 s per million events (docs/deploy.md). SQLite keeps its plain table;
both get the (on SQLite unused) id table.

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-29 05:00:00

"""

from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from alembic import op
from flask import current_app

from app.columns import UTCDateTime
from app.ingest.partitions import create_partitions, ensure_partitions, weeks_between

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

_OLD = "usage_events_unpartitioned"
_INDEXES = {
    "ix_usage_events_created": "created_at",
    "ix_usage_events_key_created": "api_key_hash, created_at",
}


def upgrade():
    op.create_table(
        "usage_event_ids",
        sa.Column("event_id", sa.String(length=128), nullable=False),
        sa.Column("created_at", UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("event_id"),
    )
    op.create_index("ix_usage_event_ids_created", "usage_event_ids", ["created_at"])
    conn = op.get_bind()
    if conn.dialect.name != "postgresql":
        return
    settings = current_app.config["SETTINGS"]
    now = datetime.now(UTC)
    op.execute(f"ALTER TABLE usage_events RENAME TO {_OLD}")
    for index in _INDEXES:
        op.execute(f"DROP INDEX {index}")
    op.execute(
        f"""CREATE TABLE usage_events (LIKE {_OLD} INCLUDING DEFAULTS INCLUDING CONSTRAINTS,
                PRIMARY KEY (id, created_at)) PARTITION BY RANGE (created_at)"""
    )
    # The sequence goes with the new table, or dropping the old one would drop it.
    op.execute("ALTER SEQUENCE usage_events_id_seq OWNED BY usage_events.id")
    oldest = conn.execute(sa.text(f"SELECT min(created_at) FROM {_OLD}")).scalar()
    if oldest is not None:
        create_partitions(conn, weeks_between(oldest, now))
    ensure_partitions(conn, now, settings.max_event_age_days, settings.partition_weeks_ahead)
    op.execute(f"INSERT INTO usage_events SELECT * FROM {_OLD}")
    window = now - timedelta(days=settings.max_event_age_days + 1)
    conn.execute(
        sa.text(
            "INSERT INTO usage_event_ids (event_id, created_at)"
            f" SELECT event_id, created_at FROM {_OLD} WHERE created_at >= :window"
        ),
        {"window": window},
    )
    op.execute(f"DROP TABLE {_OLD}")
    for index, columns in _INDEXES.items():
        op.execute(f"CREATE INDEX {index} ON usage_events ({columns})")
    op.execute("ANALYZE usage_events")


def downgrade():
    conn = op.get_bind()
    if conn.dialect.name == "postgresql":
        op.execute(
            f"CREATE TABLE {_OLD} (LIKE usage_events INCLUDING DEFAULTS INCLUDING CONSTRAINTS)"
        )
        op.execute("ALTER SEQUENCE usage_events_id_seq OWNED BY NONE")
        op.execute(f"INSERT INTO {_OLD} SELECT * FROM usage_events")
        op.execute("DROP TABLE usage_events")  # and every partition with it
        op.execute(f"ALTER TABLE {_OLD} RENAME TO usage_events")
        op.execute("ALTER SEQUENCE usage_events_id_seq OWNED BY usage_events.id")
        op.execute("ALTER TABLE usage_events ADD PRIMARY KEY (id)")
        op.execute(
            "ALTER TABLE usage_events ADD CONSTRAINT usage_events_event_id_key UNIQUE (event_id)"
        )
        for index, columns in _INDEXES.items():
            op.execute(f"CREATE INDEX {index} ON usage_events ({columns})")
    op.drop_index("ix_usage_event_ids_created", table_name="usage_event_ids")
    op.drop_table("usage_event_ids")
