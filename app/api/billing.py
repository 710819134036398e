"""Billing endpoints: the customer portal, Stripe webhooks."""

from __future__ import annotations

import hashlib
from typing import Any
from urllib.parse import urlsplit

from flask import Blueprint, current_app, request

from app.api.schemas import PortalRequest
from app.billing.stripe_gateway import gateway, verify_webhook
from app.customers.services import authenticate_customer
from app.errors import NotFound, ValidationError
from app.models.types import utcnow
from app.services.webhooks import handle_event
from app.shapes import json_body, parse

billing = Blueprint("billing", __name__)


def _allowed_return_url(body: Any) -> str:
    url = parse(PortalRequest, body).return_url
    parts = urlsplit(url)
    if parts.scheme not in {"http", "https"} or not parts.netloc:
        raise ValidationError("return_url must be an absolute http(s) URL", field="return_url")
    origin = f"{parts.scheme}://{parts.netloc}".lower()
    if origin not in {
        o.lower() for o in current_app.config["SETTINGS"].billing_portal_allowed_origins
    }:
        raise ValidationError("return_url is not on an allowed origin", field="return_url")
    return url


@billing.post("/v1/billing/portal")
def portal() -> dict[str, str]:
    customer = authenticate_customer(request)
    return_url = _allowed_return_url(json_body(request))
    if not customer.stripe_customer_id:
        raise NotFound("no Stripe customer for this key yet", field="Authorization")
    # One session per customer, URL and minute: a double click gets the same session.
    minute = utcnow().strftime("%Y%m%d%H%M")
    key = hashlib.sha256(f"{customer.id}|{return_url}|{minute}".encode()).hexdigest()
    url = gateway().create_portal_session(customer.stripe_customer_id, return_url, f"portal-{key}")
    return {"url": url}


@billing.post("/v1/billing/webhooks/stripe")
def stripe_webhook() -> dict[str, str]:
    event = verify_webhook(
        request.get_data(),
        request.headers.get("Stripe-Signature"),
        current_app.config["SETTINGS"].stripe_webhook_secret,
    )
    return {"status": "processed" if handle_event(event) else "duplicate"}
