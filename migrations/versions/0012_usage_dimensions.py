"""Every billable dimension in the ledger: cache writes, audio, reasoning, other usage,
each event's lines, flagged usage

``usage_events``, ``usage_daily`` and ``usage_hourly`` gain a count for each part of
the input and output tokens the ledger breaks out (app/pricing/dimensions.py),
``usage_events`` the other usage (``usage_extra``), what each priced unit was
charged (``charges``) and why its usage may be short (``usage_flag``), and the
rollups a count of those flagged events (indexed where it is not zero).

Every existing row keeps its values: the new counts are 0 (no event before this
release recorded those parts; its tokens are all in tokens_input and
tokens_output, as before) and the rest NULL. The columns are added with a
constant default, which PostgreSQL records in the catalogue without rewriting a
row: each ALTER TABLE holds ACCESS EXCLUSIVE on its table (and, for the
partitioned ledger, on every partition) for milliseconds, whatever the size.
Only the partial index on ``usage_daily`` reads its table, whose rows are few
(keys × days × models). Measured in tests/test_usage_dimensions.py on a copy of
1 million events and their rollups. Run it, as every migration, before the
workers of the new release start.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-03 14:00:00

"""

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

# The parts app/pricing/dimensions.py names, but tokens_cache_read (there from the start).
_NEW_PARTS = (
    "tokens_cache_write",
    "tokens_input_audio",
    "tokens_cache_audio_read",
    "tokens_output_audio",
    "tokens_output_reasoning",
)
_ROLLUPS = ("usage_daily", "usage_hourly")


def _count(name: str) -> sa.Column:
    return sa.Column(name, sa.BigInteger(), nullable=False, server_default="0")


def upgrade():
    for name in _NEW_PARTS:
        op.add_column("usage_events", _count(name))
    op.add_column("usage_events", sa.Column("usage_extra", sa.JSON()))
    op.add_column("usage_events", sa.Column("charges", sa.JSON()))
    op.add_column("usage_events", sa.Column("usage_flag", sa.String(length=32)))
    for table in _ROLLUPS:
        for name in (*_NEW_PARTS, "flagged_events"):
            op.add_column(table, _count(name))
    op.create_index(
        "ix_usage_daily_flagged",
        "usage_daily",
        ["day"],
        postgresql_where=sa.text("flagged_events > 0"),
        sqlite_where=sa.text("flagged_events > 0"),
    )


def downgrade():
    op.drop_index("ix_usage_daily_flagged", table_name="usage_daily")
    for table in _ROLLUPS:
        with op.batch_alter_table(table) as batch:
            for name in (*_NEW_PARTS, "flagged_events"):
                batch.drop_column(name)
    with op.batch_alter_table("usage_events") as batch:
        for name in (*_NEW_PARTS, "usage_extra", "charges", "usage_flag"):
            batch.drop_column(name)
