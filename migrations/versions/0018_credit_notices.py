"""Credit notices: low balance and expiring credit, through the alerts' webhooks

An alert may now belong to no budget (a prepaid customer's notice); two flags say a
notice was given, so it is given once per crossing. New columns with defaults and a
constraint dropped: nothing rewritten.

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-03 17:00:00

"""

import sqlalchemy as sa
from alembic import op

revision = "0018"
down_revision = "0017"
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table("budget_alerts") as batch:
        batch.alter_column("budget_id", existing_type=sa.Integer(), nullable=True)
    op.add_column(
        "credit_accounts",
        sa.Column("low_balance_alerted", sa.Boolean(), nullable=False, server_default=sa.false()),
    )
    op.add_column(
        "credit_grants",
        sa.Column("expiry_warned", sa.Boolean(), nullable=False, server_default=sa.false()),
    )


def downgrade():
    op.drop_column("credit_grants", "expiry_warned")
    op.drop_column("credit_accounts", "low_balance_alerted")
    op.execute("DELETE FROM budget_alerts WHERE budget_id IS NULL")
    with op.batch_alter_table("budget_alerts") as batch:
        batch.alter_column("budget_id", existing_type=sa.Integer(), nullable=False)
