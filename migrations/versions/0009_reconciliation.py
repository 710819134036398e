"""reconciliation_differences: where Stripe's meter holds other than the ledger sent;
frozen_usage: each customer's usage through the days no event can reach any more

New tables only. frozen_usage fills at the first daily report after the upgrade
(one sum over the history, once).

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-29 03:00:00

"""

import sqlalchemy as sa
from alembic import op

from app.columns import Money, UTCDateTime

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

    op.create_table(
        "frozen_usage",
        sa.Column("customer_id", sa.Integer(), nullable=False),
        sa.Column("through_day", sa.Date(), nullable=False),
        sa.Column("tokens_total", sa.Numeric(30, 0), nullable=False),
        sa.Column("cost_total", Money(), nullable=False),
        sa.ForeignKeyConstraint(["customer_id"], ["billing_customers.id"]),
        sa.PrimaryKeyConstraint("customer_id"),
    )


def downgrade():
    op.drop_table("frozen_usage")
    op.drop_table("reconciliation_differences")
