"""Prepaid credits: accounts, grants, the append-only ledger, and recharges

Four new, empty tables: no lock on any other, nothing to backfill. A customer is
postpaid, as before, until it has an account.

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-03 19:00:00

"""

import sqlalchemy as sa
from alembic import op

from app.columns import Money, UTCDateTime

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None


def _customer() -> sa.Column:
    return sa.Column(
        "customer_id",
        sa.Integer(),
        sa.ForeignKey("billing_customers.id", ondelete="CASCADE"),
        nullable=False,
    )


def _at(name: str, nullable: bool = False) -> sa.Column:
    return sa.Column(name, UTCDateTime(timezone=True), nullable=nullable)


def upgrade():
    op.create_table(
        "credit_accounts",
        sa.Column(
            "customer_id",
            sa.Integer(),
            sa.ForeignKey("billing_customers.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("overage", sa.String(8), nullable=False),
        sa.Column("charged", Money(), nullable=False),
        sa.Column("billed_before", Money(), nullable=False),
        sa.Column("recharge_threshold", Money(), nullable=True),
        sa.Column("recharge_amount", Money(), nullable=True),
        sa.Column("recharge_daily_limit", sa.Integer(), nullable=False),
        sa.Column("recharge_paused", sa.Boolean(), nullable=False),
        sa.Column("payment_method", sa.String(255), nullable=True),
        sa.Column("low_balance_at", Money(), nullable=True),
        _at("created_at"),
        _at("updated_at"),
    )
    op.create_table(
        "credit_grants",
        sa.Column("id", sa.Integer(), primary_key=True),
        _customer(),
        sa.Column("amount", Money(), nullable=False),
        sa.Column("category", sa.String(16), nullable=False),
        sa.Column("priority", sa.Integer(), nullable=False),
        _at("effective_at"),
        _at("expires_at", nullable=True),
        sa.Column("source", sa.String(255), nullable=False, unique=True),
        sa.Column("note", sa.Text(), nullable=True),
        _at("closed_at", nullable=True),
        _at("created_at"),
    )
    op.create_index("ix_credit_grants_customer_id", "credit_grants", ["customer_id"])
    op.create_table(
        "credit_entries",
        sa.Column("id", sa.Integer(), primary_key=True),
        _customer(),
        sa.Column("grant_id", sa.Integer(), sa.ForeignKey("credit_grants.id"), nullable=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("amount", Money(), nullable=False),
        _at("at"),
        sa.Column("note", sa.Text(), nullable=True),
        _at("created_at"),
    )
    op.create_index("ix_credit_entries_customer_at", "credit_entries", ["customer_id", "at"])
    op.create_index("ix_credit_entries_grant_id", "credit_entries", ["grant_id"])
    op.create_table(
        "credit_recharges",
        sa.Column("id", sa.Integer(), primary_key=True),
        _customer(),
        sa.Column("idempotency_key", sa.String(128), nullable=False, unique=True),
        sa.Column("payment_intent", sa.String(255), nullable=True, unique=True),
        sa.Column("amount", Money(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        _at("created_at"),
        _at("updated_at"),
    )
    op.create_index("ix_credit_recharges_customer_id", "credit_recharges", ["customer_id"])


def downgrade():
    op.drop_table("credit_recharges")
    op.drop_table("credit_entries")
    op.drop_table("credit_grants")
    op.drop_table("credit_accounts")
