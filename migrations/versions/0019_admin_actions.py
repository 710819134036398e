"""Operators' actions on /admin, recorded; who an admin session is; when installed

An admin session now names its operator (asked at sign-in), and every action taken
from /admin is kept with who, when, what and its outcome. A batch's receipt says when
the API accepted it, so the ingest lag runs from receipt to stored row. One row says when the
service was installed (or upgraded to this revision), so a scheduled job that has
never run is late only once it has been due. New tables and a nullable column:
nothing rewritten.

Revision ID: 0019
Revises: 0018
Create Date: 2026-12-03 18:40:00

"""

from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

from app.columns import UTCDateTime

revision = "0019"
down_revision = "0018"
branch_labels = None
depends_on = None


def upgrade():
    op.add_column("page_sessions", sa.Column("operator", sa.String(100), nullable=True))
    op.add_column("ingest_batches", sa.Column("accepted_at", UTCDateTime(timezone=True)))
    op.create_table(
        "admin_actions",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True),
        sa.Column("at", UTCDateTime(timezone=True), nullable=False),
        sa.Column("operator", sa.String(100), nullable=False),
        sa.Column("action", sa.String(40), nullable=False),
        sa.Column("target", sa.String(200), nullable=True),
        sa.Column("outcome", sa.String(500), nullable=False),
        sa.Column("succeeded", sa.Boolean(), nullable=False),
    )
    op.create_index("ix_admin_actions_at", "admin_actions", ["at"])
    installation = op.create_table(
        "installation",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("installed_at", UTCDateTime(timezone=True), nullable=False),
    )
    op.bulk_insert(installation, [{"id": 1, "installed_at": datetime.now(UTC)}])


def downgrade():
    op.drop_table("installation")
    op.drop_index("ix_admin_actions_at", table_name="admin_actions")
    op.drop_table("admin_actions")
    op.drop_column("ingest_batches", "accepted_at")
    op.drop_column("page_sessions", "operator")
