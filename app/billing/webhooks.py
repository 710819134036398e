"""Stripe webhook events: each recorded once, keeping customer status current."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from app.billing.gateway import StripeEvent
from app.billing.models import StripeWebhookEvent
from app.budgets.alerts import queue_notices
from app.columns import utcnow
from app.config import Settings
from app.credits.notices import recharge_failed_notice
from app.credits.purchases import (
    StripePayments,
    checkout_paid,
    recharge_failed,
    recharge_succeeded,
)
from app.customers.keys import keys_changed
from app.customers.models import BillingCustomer
from app.extensions import db

log = logging.getLogger("usage_billing.webhooks")

_PAYMENT_STATUS = {"invoice.paid": "paid", "invoice.payment_failed": "payment_failed"}


def _credit(
    event_type: str, obj: dict[str, Any], stripe: StripePayments, settings: Settings
) -> None:
    """Prepaid credit's events: a purchase paid, a recharge paid or declined. The
    customer's admission record follows a grant at once."""
    now = utcnow()
    if event_type in ("checkout.session.completed", "checkout.session.async_payment_succeeded"):
        granted = checkout_paid(obj, stripe, now, settings.max_event_age_days)
    elif event_type == "payment_intent.succeeded":
        granted = recharge_succeeded(obj, now, settings.max_event_age_days)
    else:
        failed = recharge_failed(obj)
        if failed is not None:  # the customer is told (a signed webhook), once
            queue_notices([recharge_failed_notice(failed)], now)
        granted = False
    db.session.commit()
    if granted:
        keys_changed.send(int(obj["metadata"]["customer_id"]))


_CREDIT_EVENTS = frozenset(
    {
        "checkout.session.completed",
        "checkout.session.async_payment_succeeded",
        "payment_intent.succeeded",
        "payment_intent.payment_failed",
    }
)


def _apply(event_type: str, obj: dict[str, Any]) -> None:
    stripe_customer_id = obj.get("customer")
    customer = db.session.scalar(
        select(BillingCustomer).where(BillingCustomer.stripe_customer_id == stripe_customer_id)
    )
    if customer is None:
        log.warning("webhook for an unknown customer", extra={"type": event_type})
        return
    if event_type.startswith("customer.subscription."):
        deleted = event_type == "customer.subscription.deleted"
        customer.subscription_status = "canceled" if deleted else str(obj.get("status"))
    elif event_type in _PAYMENT_STATUS:
        customer.payment_status = _PAYMENT_STATUS[event_type]


def handle_event(event: StripeEvent, stripe: StripePayments, settings: Settings) -> bool:
    """Apply a verified event; False when this event id was already handled."""
    created = datetime.fromtimestamp(event.created, UTC)
    db.session.add(StripeWebhookEvent(id=event.id, type=event.type, created=created))
    try:
        db.session.flush()
    except IntegrityError:
        db.session.rollback()
        return False
    if event.type in _CREDIT_EVENTS:
        _credit(event.type, event.data.object, stripe, settings)
        return True
    _apply(event.type, event.data.object)
    db.session.commit()
    return True
