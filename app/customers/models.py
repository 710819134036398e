"""Billing customers and their API keys.

A customer holds many keys; usage is recorded by key hash, and adds up per
customer through ``api_keys``. ``billing_customers.api_key_hash`` is the key the
customer was registered with: its stable identity for onboarding (registering
that key again finds the customer; the Stripe customer is created under it),
whatever becomes of the key itself.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Boolean, ForeignKey, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from app.columns import UTCDateTime, utcnow
from app.extensions import Model


class BillingCustomer(Model):
    __tablename__ = "billing_customers"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    api_key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    stripe_customer_id: Mapped[str | None] = mapped_column(String(64), unique=True)
    email: Mapped[str] = mapped_column(String(320))
    name: Mapped[str] = mapped_column(String(200))
    company: Mapped[str | None] = mapped_column(String(200))
    billing_interval: Mapped[str] = mapped_column(String(16), default="month")
    is_active: Mapped[bool] = mapped_column(Boolean, default=True)
    subscription_status: Mapped[str | None] = mapped_column(String(32))
    payment_status: Mapped[str | None] = mapped_column(String(32))
    # Where budget alerts go, and the secret they are signed with (shown once, when set).
    alert_webhook_url: Mapped[str | None] = mapped_column(String(2000))
    alert_webhook_secret: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)


class ApiKey(Model):
    """One key of a customer, by its SHA-256 hash; the raw key is shown once and never kept.

    ``prefix`` (the first characters of a key the service issued) lets a person
    tell keys apart; a key registered from outside has none. A revoked key stays,
    so its past usage still adds up to its customer.
    """

    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    customer_id: Mapped[int] = mapped_column(
        ForeignKey("billing_customers.id", ondelete="CASCADE"), index=True
    )
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str | None] = mapped_column(String(16))
    label: Mapped[str] = mapped_column(String(100))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    @property
    def is_revoked(self) -> bool:
        return self.revoked_at is not None
