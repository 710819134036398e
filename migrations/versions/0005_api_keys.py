"""api_keys: a customer's many API keys; each existing customer's key becomes its first

Every customer's registered key hash is copied into ``api_keys`` (labelled
"registered", no prefix: the service never saw it whole), so every key that
worked before works after. Creating the table and copying one row per customer
is quick and locks only the new table.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-28 23:40:00

"""

import sqlalchemy as sa
from alembic import op

from app.columns import UTCDateTime

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        "api_keys",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("customer_id", sa.Integer(), nullable=False),
        sa.Column("key_hash", sa.String(length=64), nullable=False),
        sa.Column("prefix", sa.String(length=16), nullable=True),
        sa.Column("label", sa.String(length=100), nullable=False),
        sa.Column("created_at", UTCDateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", UTCDateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["customer_id"], ["billing_customers.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("key_hash"),
    )
    op.create_index("ix_api_keys_customer_id", "api_keys", ["customer_id"])
    op.execute(
        "INSERT INTO api_keys (customer_id, key_hash, prefix, label, created_at) "
        "SELECT id, api_key_hash, NULL, 'registered', created_at FROM billing_customers"
    )


def downgrade():
    op.drop_index("ix_api_keys_customer_id", table_name="api_keys")
    op.drop_table("api_keys")
