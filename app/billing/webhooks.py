"""Stripe webhook events: each recorded once, keeping customer status current."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from app.billing.gateway import StripeEvent
from app.billing.models import StripeWebhookEvent
from app.customers.models import BillingCustomer
from app.extensions import db

log = logging.getLogger("usage_billing.webhooks")

_PAYMENT_STATUS = {"invoice.paid": "paid", "invoice.payment_failed": "payment_failed"}


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


def handle_event(event: StripeEvent) -> bool:
    """Apply a verified event; False when this event id was already handled."""
    created = datetime.fromtimestamp(event.created, UTC)
    db.session.add(StripeWebhookEvent(id=event.id, type=event.type, created=created))
    try:
        db.session.flush()
    except IntegrityError:
        db.session.rollback()
        return False
    _apply(event.type, event.data.object)
    db.session.commit()
    return True
