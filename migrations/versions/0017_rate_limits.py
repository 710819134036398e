"""Rate limits: requests and tokens per minute, per customer or per key

One new, empty table: no lock on any other, nothing to backfill.

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-03 16:20:00

"""

import sqlalchemy as sa
from alembic import op

from app.columns import UTCDateTime

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        "rate_limits",
        sa.Column("scope", sa.String(32), primary_key=True),
        sa.Column(
            "customer_id",
            sa.Integer(),
            sa.ForeignKey("billing_customers.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("api_key_id", sa.Integer(), sa.ForeignKey("api_keys.id", ondelete="CASCADE")),
        sa.Column("requests_per_minute", sa.BigInteger()),
        sa.Column("tokens_per_minute", sa.BigInteger()),
        sa.Column("updated_at", UTCDateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_rate_limits_customer_id", "rate_limits", ["customer_id"])


def downgrade():
    op.drop_index("ix_rate_limits_customer_id", "rate_limits")
    op.drop_table("rate_limits")
