"""budgets, budget_alerts, alert_deliveries; where a customer's alerts go

New tables only, and two nullable columns on billing_customers: no rewrite, a
brief lock.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-28 23:50:00

"""

import sqlalchemy as sa
from alembic import op

from app.columns import Money, UTCDateTime

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table("billing_customers") as batch_op:
        batch_op.add_column(sa.Column("alert_webhook_url", sa.String(length=2000), nullable=True))
        batch_op.add_column(sa.Column("alert_webhook_secret", sa.String(length=64), nullable=True))
    op.create_table(
        "budgets",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("customer_id", sa.Integer(), nullable=False),
        sa.Column("api_key_id", sa.Integer(), nullable=True),
        sa.Column("metric", sa.String(length=8), nullable=False),
        sa.Column("period", sa.String(length=16), nullable=False),
        sa.Column("limit_value", Money(), nullable=False),
        sa.Column("customer_limit", Money(), nullable=True),
        sa.Column("thresholds", sa.JSON(), nullable=False),
        sa.Column("hard_limit", sa.Boolean(), nullable=False),
        sa.Column("created_at", UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", UTCDateTime(timezone=True), nullable=False),
        sa.CheckConstraint("metric IN ('usd', 'tokens')", name="ck_budgets_metric"),
        sa.CheckConstraint(
            "period IN ('day', 'month', 'billing_period')", name="ck_budgets_period"
        ),
        sa.CheckConstraint("limit_value > 0", name="ck_budgets_limit_positive"),
        sa.ForeignKeyConstraint(["customer_id"], ["billing_customers.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["api_key_id"], ["api_keys.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_budgets_customer_id", "budgets", ["customer_id"])
    op.create_table(
        "budget_alerts",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("budget_id", sa.Integer(), nullable=False),
        sa.Column("customer_id", sa.Integer(), nullable=False),
        sa.Column("threshold", sa.Integer(), nullable=False),
        sa.Column("period_start", sa.Date(), nullable=False),
        sa.Column("spent", Money(), nullable=False),
        sa.Column("limit_value", Money(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", UTCDateTime(timezone=True), nullable=False),
        sa.Column("created_at", UTCDateTime(timezone=True), nullable=False),
        sa.Column("delivered_at", UTCDateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["budget_id"], ["budgets.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["customer_id"], ["billing_customers.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("budget_id", "threshold", "period_start"),
    )
    op.create_index("ix_budget_alerts_customer_id", "budget_alerts", ["customer_id"])
    op.create_index("ix_budget_alerts_next_attempt_at", "budget_alerts", ["next_attempt_at"])
    op.create_table(
        "alert_deliveries",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("alert_id", sa.Integer(), nullable=False),
        sa.Column("url", sa.String(length=2000), nullable=False),
        sa.Column("attempted_at", UTCDateTime(timezone=True), nullable=False),
        sa.Column("status_code", sa.Integer(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(["alert_id"], ["budget_alerts.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_alert_deliveries_alert_id", "alert_deliveries", ["alert_id"])


def downgrade():
    op.drop_table("alert_deliveries")
    op.drop_table("budget_alerts")
    op.drop_table("budgets")
    with op.batch_alter_table("billing_customers") as batch_op:
        batch_op.drop_column("alert_webhook_secret")
        batch_op.drop_column("alert_webhook_url")
