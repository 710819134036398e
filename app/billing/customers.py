"""Onboarding: a Stripe customer for an API key, linked by the key's hash."""

from __future__ import annotations

from app.billing.stripe_gateway import gateway
from app.extensions import db
from app.models import BillingCustomer
from app.services.customers import customer_for_key_hash, register_customer


def create_stripe_customer(
    email: str, name: str, api_key_hash: str, company: str | None = None
) -> str:
    """Create (once) the Stripe customer for a key hash and return its id.

    Calling it again for the same key returns the existing id without calling
    Stripe; a retry after a crash before our commit reuses the idempotency key,
    so Stripe returns the customer it already made instead of a second one.
    """
    existing: BillingCustomer | None = customer_for_key_hash(api_key_hash)
    if existing is not None and existing.stripe_customer_id:
        return existing.stripe_customer_id
    stripe_id = gateway().create_customer(
        email=email,
        name=name,
        api_key_hash=api_key_hash,
        idempotency_key=f"customer-{api_key_hash}",
    )
    if existing is None:
        register_customer(email, name, api_key_hash, company=company, stripe_customer_id=stripe_id)
    else:
        existing.stripe_customer_id = stripe_id
        db.session.commit()
    return stripe_id
