"""model_prices.rules: the price source's whole rules for a price version

Tiers by prompt size, dated changes and time-of-day prices, as genai-prices
defines them (JSON, app/pricing/cost.py). NULL for a flat price from our own
JSON source. Adding a nullable column takes a brief lock and rewrites nothing;
start-up then adds a rules version of every bundled price, effective from then.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-28 21:00:00

"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade():
    op.add_column("model_prices", sa.Column("rules", sa.JSON(), nullable=True))


def downgrade():
    op.drop_column("model_prices", "rules")
