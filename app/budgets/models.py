"""Budgets, the alerts they raise, and every attempt to deliver one."""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import JSON, Boolean, Date, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from app.columns import Quantity, UTCDateTime, utcnow
from app.extensions import Model

USD, TOKENS = "usd", "tokens"
# Alert delivery states: queued until a delivery succeeds or the retry window ends;
# an alert of a customer with no webhook is only recorded (readable through the API);
# unconfirmed: its request went out whole, and the worker stopped before the answer.
QUEUED, DELIVERED, ABANDONED, NO_WEBHOOK = "queued", "delivered", "abandoned", "no_webhook"
UNCONFIRMED = "unconfirmed"


class Budget(Model):
    """A limit on a customer's spend (or one key's) over a period.

    ``limit_value`` is the admin's; ``customer_limit`` a lower one the customer set
    for itself (never above the admin's). Thresholds are percentages of the
    effective limit; reaching one raises one alert per period. With
    ``hard_limit``, calls past the limit are refused when enforcement is on.
    """

    __tablename__ = "budgets"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    customer_id: Mapped[int] = mapped_column(
        ForeignKey("billing_customers.id", ondelete="CASCADE"), index=True
    )
    api_key_id: Mapped[int | None] = mapped_column(ForeignKey("api_keys.id", ondelete="CASCADE"))
    metric: Mapped[str] = mapped_column(String(8))
    period: Mapped[str] = mapped_column(String(16))
    limit_value: Mapped[Decimal] = mapped_column(Quantity)
    customer_limit: Mapped[Decimal | None] = mapped_column(Quantity)
    thresholds: Mapped[list[int]] = mapped_column(JSON, default=list)
    hard_limit: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)

    @property
    def effective_limit(self) -> Decimal:
        if self.customer_limit is None:
            return self.limit_value
        return min(self.limit_value, self.customer_limit)


class BudgetAlert(Model):
    """One threshold of one budget reached in one period: unique, so raised once. Or a
    prepaid customer's notice, raised once by the flag its crossing set."""

    __tablename__ = "budget_alerts"
    __table_args__ = (UniqueConstraint("budget_id", "threshold", "period_start"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    # None: a prepaid customer's notice (``app.credits.notices``), its kind in the payload.
    budget_id: Mapped[int | None] = mapped_column(ForeignKey("budgets.id", ondelete="CASCADE"))
    customer_id: Mapped[int] = mapped_column(
        ForeignKey("billing_customers.id", ondelete="CASCADE"), index=True
    )
    threshold: Mapped[int] = mapped_column(Integer)
    period_start: Mapped[date] = mapped_column(Date)
    spent: Mapped[Decimal] = mapped_column(Quantity)
    limit_value: Mapped[Decimal] = mapped_column(Quantity)
    status: Mapped[str] = mapped_column(String(16), default=QUEUED)
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class AlertDelivery(Model):
    """One attempt to deliver an alert to the customer's webhook, whatever came of it."""

    __tablename__ = "alert_deliveries"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    alert_id: Mapped[int] = mapped_column(
        ForeignKey("budget_alerts.id", ondelete="CASCADE"), index=True
    )
    url: Mapped[str] = mapped_column(String(2000))
    attempted_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # Set when the request was written but its last byte: from here the receiver can
    # have it, so an attempt that ends without an outcome is not sent again.
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    status_code: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text)
