"""price_plans, plan_assignments, period_charges; the standard plan (provider cost)

New tables only. Every customer without an assignment is on the standard plan,
which charges what the usage cost: what it owed before plans existed.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-29 00:30:00

"""

from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

from app.columns import UTCDateTime

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade():
    plans = op.create_table(
        "price_plans",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("code", sa.String(length=64), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("terms", sa.JSON(), nullable=False),
        sa.Column("created_at", UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("code", "version"),
    )
    op.create_table(
        "plan_assignments",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("customer_id", sa.Integer(), nullable=False),
        sa.Column("plan_id", sa.Integer(), nullable=False),
        sa.Column("effective_from", sa.Date(), nullable=False),
        sa.Column("created_at", UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["customer_id"], ["billing_customers.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["plan_id"], ["price_plans.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("customer_id", "effective_from"),
    )
    op.create_index("ix_plan_assignments_customer_id", "plan_assignments", ["customer_id"])
    op.create_table(
        "period_charges",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("customer_id", sa.Integer(), nullable=False),
        sa.Column("period_start", sa.Date(), nullable=False),
        sa.Column("period_end", sa.Date(), nullable=False),
        sa.Column("total", sa.String(length=80), nullable=False),
        sa.Column("frozen_at", UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["customer_id"], ["billing_customers.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("customer_id", "period_start"),
    )
    op.create_index("ix_period_charges_customer_id", "period_charges", ["customer_id"])
    op.bulk_insert(
        plans,
        [
            {
                "code": "standard",
                "version": 1,
                "name": "Standard: provider cost",
                "terms": {"unit": "usd"},
                "created_at": datetime(2026, 11, 29, tzinfo=UTC),
            }
        ],
    )


def downgrade():
    op.drop_table("period_charges")
    op.drop_table("plan_assignments")
    op.drop_table("price_plans")
