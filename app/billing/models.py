"""What was sent to Stripe (the report ledger) and what Stripe sent us (webhooks)."""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal
from enum import StrEnum

from sqlalchemy import (
    BigInteger,
    Date,
    ForeignKey,
    Integer,
    Numeric,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from app.columns import Money, UTCDateTime, utcnow
from app.extensions import Model


class ReportStatus(StrEnum):
    """Where a report of a customer's day stands with Stripe."""

    PENDING = "pending"
    SENT = "sent"
    FAILED = "failed"  # retried by the next run
    NEEDS_MANUAL = "needs_manual"  # Stripe can no longer take it: an operator bills it
    RESOLVED = "resolved"  # a needs_manual report an operator has settled by hand


class UsageReport(Model):
    """One meter event we owe or sent Stripe for one customer and day.

    ``seq`` numbers the reports of the same day: 0 is the daily report, later ones
    are corrections for usage that arrived after it. The row is written *before*
    the Stripe call, so a crash between Stripe's answer and our commit re-sends the
    same identifier and idempotency key, which Stripe answers without billing again.
    """

    __tablename__ = "usage_reports"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    customer_id: Mapped[int] = mapped_column(ForeignKey("billing_customers.id"))
    day: Mapped[date] = mapped_column(Date)
    seq: Mapped[int] = mapped_column(Integer)
    mode: Mapped[str] = mapped_column(String(32))
    quantity: Mapped[int] = mapped_column(BigInteger)
    quantity_unit: Mapped[str] = mapped_column(String(32))
    cumulative_exact: Mapped[Decimal] = mapped_column(Money)
    cumulative_units: Mapped[int] = mapped_column(BigInteger)
    identifier: Mapped[str] = mapped_column(String(100), unique=True)
    idempotency_key: Mapped[str] = mapped_column(String(100))
    stripe_event_name: Mapped[str] = mapped_column(String(100))
    status: Mapped[str] = mapped_column(String(16), default=ReportStatus.PENDING)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    __table_args__ = (UniqueConstraint("customer_id", "day", "seq", name="uq_usage_reports_seq"),)


class StripeWebhookEvent(Model):
    """Each Stripe event id once: a replayed delivery is acknowledged and ignored."""

    __tablename__ = "stripe_webhook_events"

    id: Mapped[str] = mapped_column(String(100), primary_key=True)
    type: Mapped[str] = mapped_column(String(100))
    created: Mapped[datetime] = mapped_column(UTCDateTime)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class ReconciliationDifference(Model):
    """A customer and day where Stripe's meter holds other than our ledger says was sent.

    Found by the daily reconciliation (``app/billing/reconcile.py``); kept
    open until a later run finds the two equal again (``resolved_at``), so
    ``flask billing status`` fails while any is open.
    """

    __tablename__ = "reconciliation_differences"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    customer_id: Mapped[int] = mapped_column(ForeignKey("billing_customers.id"))
    day: Mapped[date] = mapped_column(Date)
    sent: Mapped[Decimal] = mapped_column(Money)  # our ledger, in reported units
    in_stripe: Mapped[Decimal] = mapped_column(Money)  # Stripe's event summary
    found_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    checked_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    resolved_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    __table_args__ = (UniqueConstraint("customer_id", "day"),)


class FrozenUsage(Model):
    """A customer's usage summed through a day no event can reach any more.

    Events older than ``MAX_EVENT_AGE_DAYS`` are refused, so the rollup of such a
    day never changes again: the daily report adds only the days after
    ``through_day`` to this sum, and its cost depends on the days since the last
    report, not on the length of the history.
    """

    __tablename__ = "frozen_usage"

    customer_id: Mapped[int] = mapped_column(ForeignKey("billing_customers.id"), primary_key=True)
    through_day: Mapped[date] = mapped_column(Date)
    tokens_total: Mapped[Decimal] = mapped_column(Numeric(30, 0))
    cost_total: Mapped[Decimal] = mapped_column(Money)
