"""Prepaid credits: each customer's account, its grants, and the append-only ledger.

The ledger (``credit_entries``) is never updated in place: a grant, a burn, an
expiry, a void, a refund or an adjustment is a row of its own, signed (what adds
to the balance is positive), and the balance is their sum: the same figure for
the API, the dashboard and a query of the table. What credits did not cover is
an ``overage`` row beside them (positive, outside the balance): what the daily
report bills. A grant's own remaining amount is the sum of the rows naming it.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from enum import StrEnum

from sqlalchemy import Boolean, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from app.columns import Money, UTCDateTime, utcnow
from app.extensions import Model


class Overage(StrEnum):
    """What happens when the balance runs out."""

    BLOCK = "block"  # admission refuses the customer's calls (402 credits_exhausted)
    BILL = "bill"  # calls go on; what credits did not cover is billed through Stripe


class EntryKind(StrEnum):
    GRANT = "grant"
    BURN = "burn"  # usage paid from a grant
    EXPIRY = "expiry"  # what was left of a grant at its expiry
    VOID = "void"  # what was left of a grant an admin withdrew
    REFUND = "refund"  # purchased credit given back as money
    ADJUSTMENT = "adjustment"  # an admin's correction, either way
    OVERAGE = "overage"  # usage no grant covered (not part of the balance)


class CreditAccount(Model):
    """A prepaid customer: how it runs out, and how it tops up by itself.

    ``charged`` is what the customer owed under its plans when its grants were last
    burnt: the next burn takes what it owes now less that, so each event is paid
    once, however often its batch is delivered. The row is locked while burning,
    so two workers never burn one customer at once.
    """

    __tablename__ = "credit_accounts"

    customer_id: Mapped[int] = mapped_column(
        ForeignKey("billing_customers.id", ondelete="CASCADE"), primary_key=True
    )
    overage: Mapped[str] = mapped_column(String(8), default=Overage.BILL)
    charged: Mapped[Decimal] = mapped_column(Money, default=Decimal(0))
    # What it owed before it was prepaid: billed as before, never paid from credits.
    billed_before: Mapped[Decimal] = mapped_column(Money, default=Decimal(0))
    # Auto-recharge: below ``recharge_threshold``, charge ``recharge_amount`` to the
    # saved payment method, at most ``recharge_daily_limit`` times a UTC day.
    recharge_threshold: Mapped[Decimal | None] = mapped_column(Money)
    recharge_amount: Mapped[Decimal | None] = mapped_column(Money)
    recharge_daily_limit: Mapped[int] = mapped_column(Integer, default=3)
    recharge_paused: Mapped[bool] = mapped_column(Boolean, default=False)
    payment_method: Mapped[str | None] = mapped_column(String(255))  # Stripe's pm_…
    low_balance_at: Mapped[Decimal | None] = mapped_column(Money)  # alert below this
    # Told of this crossing below ``low_balance_at``; re-armed by a top-up above it.
    low_balance_alerted: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)


class CreditGrant(Model):
    """An amount of credit a customer may spend from ``effective_at`` until
    ``expires_at`` (never, when None). Lower ``priority`` is spent first, as with
    Stripe's credit grants. ``source`` names where it came from, once: a Stripe
    Checkout Session or PaymentIntent grants exactly one credit."""

    __tablename__ = "credit_grants"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    customer_id: Mapped[int] = mapped_column(
        ForeignKey("billing_customers.id", ondelete="CASCADE"), index=True
    )
    amount: Mapped[Decimal] = mapped_column(Money)
    category: Mapped[str] = mapped_column(String(16))  # "purchased" or "promotional"
    priority: Mapped[int] = mapped_column(Integer, default=50)
    effective_at: Mapped[datetime] = mapped_column(UTCDateTime)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    source: Mapped[str] = mapped_column(String(255), unique=True)
    note: Mapped[str | None] = mapped_column(Text)
    closed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)  # expired or voided
    expiry_warned: Mapped[bool] = mapped_column(Boolean, default=False)  # told it expires soon
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class CreditEntry(Model):
    __tablename__ = "credit_entries"
    __table_args__ = (Index("ix_credit_entries_customer_at", "customer_id", "at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    customer_id: Mapped[int] = mapped_column(ForeignKey("billing_customers.id", ondelete="CASCADE"))
    grant_id: Mapped[int | None] = mapped_column(ForeignKey("credit_grants.id"), index=True)
    kind: Mapped[str] = mapped_column(String(16))
    amount: Mapped[Decimal] = mapped_column(Money)
    at: Mapped[datetime] = mapped_column(UTCDateTime)  # when it took effect
    note: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class RechargeStatus(StrEnum):
    PENDING = "pending"  # the PaymentIntent is made; its outcome comes by webhook
    SUCCEEDED = "succeeded"
    FAILED = "failed"


class CreditRecharge(Model):
    """One automatic top-up: one per crossing of the threshold (its idempotency key
    names the crossing), credited only on Stripe's ``payment_intent.succeeded``."""

    __tablename__ = "credit_recharges"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    customer_id: Mapped[int] = mapped_column(
        ForeignKey("billing_customers.id", ondelete="CASCADE"), index=True
    )
    idempotency_key: Mapped[str] = mapped_column(String(128), unique=True)
    payment_intent: Mapped[str | None] = mapped_column(String(255), unique=True)
    amount: Mapped[Decimal] = mapped_column(Money)
    status: Mapped[str] = mapped_column(String(16), default=RechargeStatus.PENDING)
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)
