"""ingest_batches: the receipt of each recorded batch

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25 08:30:00

"""

import sqlalchemy as sa
from alembic import op

from app.columns import UTCDateTime

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        "ingest_batches",
        sa.Column("batch_id", sa.String(length=64), nullable=False),
        sa.Column("events", sa.Integer(), nullable=False),
        sa.Column("recorded_at", UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("batch_id"),
    )
    op.create_index("ix_ingest_batches_recorded", "ingest_batches", ["recorded_at"])


def downgrade():
    op.drop_index("ix_ingest_batches_recorded", table_name="ingest_batches")
    op.drop_table("ingest_batches")
