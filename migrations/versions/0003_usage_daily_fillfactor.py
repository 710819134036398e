"""usage_daily: leave room on each page so rollup updates stay HOT

Every batch a worker records updates hundreds of usage_daily rows. With full
pages each update writes its new version to another page and a new entry into
both indexes; with 30% of each page free PostgreSQL updates in place (a HOT
update, no index write). Measured on a 500-event batch touching 500 rollup
rows: 80% of updates HOT instead of 7%, PostgreSQL CPU per 1000 events 31 -> 25 ms.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25 11:05:00

"""

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade():
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE usage_daily SET (fillfactor = 70)")


def downgrade():
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE usage_daily RESET (fillfactor)")
