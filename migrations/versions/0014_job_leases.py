"""job_runs.holder and heartbeat_at: a running job's lock is a lease its process renews

Two nullable columns: no rewrite, no lock beyond the moment of the change. A run
left ``running`` by the release before has neither, and counts as renewed when it
started: it is taken over once ``JOB_LEASE_SECONDS`` have passed since.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-03 16:00:00

"""

import sqlalchemy as sa
from alembic import op

from app.columns import UTCDateTime

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade():
    op.add_column("job_runs", sa.Column("holder", sa.String(length=128)))
    op.add_column("job_runs", sa.Column("heartbeat_at", UTCDateTime(timezone=True)))


def downgrade():
    with op.batch_alter_table("job_runs") as batch:
        batch.drop_column("heartbeat_at")
        batch.drop_column("holder")
