"""alert_deliveries.sent_at: when an attempt committed to sending its request

A worker writes the request but its last byte, records ``sent_at``, then writes
the last byte. An attempt left without an outcome tells from it whether the
receiver can have the request (then it is not sent again) or cannot (then it is).
A new nullable column: no rewrite, no lock beyond the moment of the change.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-02 12:00:00

"""

import sqlalchemy as sa
from alembic import op

from app.columns import UTCDateTime

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade():
    op.add_column("alert_deliveries", sa.Column("sent_at", UTCDateTime(timezone=True)))


def downgrade():
    with op.batch_alter_table("alert_deliveries") as batch:
        batch.drop_column("sent_at")
