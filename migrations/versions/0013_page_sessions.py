"""page_sessions: the pages' sessions kept on the server, so signing out ends them

A new, empty table: no lock on any other. Sessions signed before this release
(cookies carrying who was signed in) are no longer read: their holders sign in again.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-03 15:00:00

"""

import sqlalchemy as sa
from alembic import op

from app.columns import UTCDateTime

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        "page_sessions",
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("customer_id", sa.Integer(), nullable=True),
        sa.Column("key_id", sa.Integer(), nullable=True),
        sa.Column("admin_check", sa.String(length=64), nullable=True),
        sa.Column("created_at", UTCDateTime(timezone=True), nullable=False),
        sa.Column("expires_at", UTCDateTime(timezone=True), nullable=False),
        sa.Column("ended_at", UTCDateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["customer_id"], ["billing_customers.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("token_hash"),
    )
    op.create_index("ix_page_sessions_expires", "page_sessions", ["expires_at"])


def downgrade():
    op.drop_index("ix_page_sessions_expires", table_name="page_sessions")
    op.drop_table("page_sessions")
