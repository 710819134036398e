"""reconciliation_differences: where Stripe's meter holds other than the ledger sent

New table only.

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-29 03:00:00

"""

import sqlalchemy as sa
from alembic import op

from app.models.types import Money, UTCDateTime

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        "reconciliation_differences",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("customer_id", sa.Integer(), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("sent", Money(), nullable=False),
        sa.Column("in_stripe", Money(), nullable=False),
        sa.Column("found_at", UTCDateTime(timezone=True), nullable=False),
        sa.Column("checked_at", UTCDateTime(timezone=True), nullable=False),
        sa.Column("resolved_at", UTCDateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["customer_id"], ["billing_customers.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("customer_id", "day"),
    )


def downgrade():
    op.drop_table("reconciliation_differences")
