"""Billing endpoints: onboarding (admin), the customer portal, Stripe webhooks."""

from __future__ import annotations

import hashlib
from typing import Any
from urllib.parse import urlsplit

from flask import Blueprint, current_app, request

from app.api.schemas import CustomerCreate, PortalRequest
from app.billing.stripe_gateway import gateway, verify_webhook
from app.customers.services import (
    PENDING,
    customer_for_key_hash,
    link_state,
    register_customer,
    request_link,
)
from app.errors import NotFound, ValidationError
from app.models.types import utcnow
from app.security import bearer_token, hash_api_key, require_token
from app.services.webhooks import handle_event
from app.shapes import json_body, parse

billing = Blueprint("billing", __name__)


@billing.post("/v1/billing/customers")
def create_customer() -> tuple[dict[str, Any], int]:
    require_token(request, current_app.config["SETTINGS"].admin_token, "admin")
    body = parse(CustomerCreate, json_body(request))
    api_key_hash = hash_api_key(body.api_key)
    customer = register_customer(body.email, body.name, api_key_hash, company=body.company)
    link = link_state(customer, current_app.config["SETTINGS"])
    if link == PENDING:
        request_link(customer)
    return {
        "id": customer.id,
        "api_key_hash": api_key_hash,
        "stripe_customer_id": customer.stripe_customer_id,
        "stripe_link": link,
    }, 201


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
    key_hash = hash_api_key(bearer_token(request))
    return_url = _allowed_return_url(json_body(request))
    customer = customer_for_key_hash(key_hash)
    if customer is None or not customer.is_active or not customer.stripe_customer_id:
        raise NotFound("no billing customer for this key", field="Authorization")
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
