"""Billing endpoints: the customer portal, Stripe webhooks."""

from __future__ import annotations

import hashlib
from typing import Annotated, Literal

from flask import Blueprint, current_app, request
from pydantic import BaseModel, ConfigDict, Field

from app.billing.gateway import StripeEvent, verify_webhook
from app.billing.webhooks import handle_event
from app.columns import utcnow
from app.contract import Answer, operation
from app.customers.models import BillingCustomer
from app.customers.services import API_KEY
from app.errors import NotFound
from app.registry import services
from app.security import allowed_return_url
from app.shapes import Text

billing = Blueprint("billing", __name__)


class PortalRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    return_url: Annotated[str, Text(2000)] = Field(
        description="an absolute http(s) URL on an allowed origin",
        json_schema_extra={"format": "uri"},
    )


class PortalSession(Answer):
    """A Stripe billing portal session: where to send the customer."""

    url: str


class WebhookReceived(Answer):
    """The event was applied now, or had been already."""

    status: Literal["processed", "duplicate"]


@operation(
    billing,
    "POST",
    "/v1/billing/portal",
    summary="A Stripe billing portal session for the caller",
    auth=API_KEY,
    body=PortalRequest,
    answers={200: PortalSession},
    errors=(400, 401, 404, 413, 415, 502, 503),
    rules="return_url is on an origin BILLING_PORTAL_ALLOWED_ORIGINS names.",
)
def portal(body: PortalRequest, caller: BillingCustomer) -> PortalSession:
    origins = current_app.config["SETTINGS"].billing_portal_allowed_origins
    return_url = allowed_return_url(body.return_url, origins, "return_url")
    if not caller.stripe_customer_id:
        raise NotFound("no Stripe customer for this key yet", field="Authorization")
    # One session per customer, URL and minute: a double click gets the same session.
    minute = utcnow().strftime("%Y%m%d%H%M")
    key = hashlib.sha256(f"{caller.id}|{return_url}|{minute}".encode()).hexdigest()
    url = services().stripe.create_portal_session(
        caller.stripe_customer_id, return_url, f"portal-{key}"
    )
    return PortalSession(url=url)


@operation(
    billing,
    "POST",
    "/v1/billing/webhooks/stripe",
    summary="Stripe webhook (signed with STRIPE_WEBHOOK_SECRET)",
    body=StripeEvent,
    read_body=False,  # its signature covers the bytes: verify_webhook reads them
    headers={"Stripe-Signature": "Stripe's signature of the body"},
    answers={200: WebhookReceived},
    errors=(400, 413, 503),
    rules="The body is signed by Stripe with STRIPE_WEBHOOK_SECRET, at most 5 minutes ago.",
)
def stripe_webhook() -> WebhookReceived:
    event = verify_webhook(
        request.get_data(),
        request.headers.get("Stripe-Signature"),
        current_app.config["SETTINGS"].stripe_webhook_secret.get_secret_value(),
    )
    settings = current_app.config["SETTINGS"]
    handled = handle_event(event, services().stripe, settings)
    return WebhookReceived(status="processed" if handled else "duplicate")
