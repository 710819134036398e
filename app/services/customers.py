"""Who is calling: API keys resolve to billing customers by their hash."""

from __future__ import annotations

import hmac

from flask import Request
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from app.errors import AuthenticationError
from app.extensions import db
from app.models import BillingCustomer
from app.security import bearer_token, hash_api_key


def customer_for_key_hash(api_key_hash: str) -> BillingCustomer | None:
    return db.session.scalar(
        select(BillingCustomer).where(BillingCustomer.api_key_hash == api_key_hash)
    )


def register_customer(
    email: str, name: str, api_key_hash: str, company: str | None = None
) -> BillingCustomer:
    """The customer for this key, created if new; registering a key again returns it."""
    existing = customer_for_key_hash(api_key_hash)
    if existing is not None:
        return existing
    customer = BillingCustomer(email=email, name=name, api_key_hash=api_key_hash, company=company)
    db.session.add(customer)
    try:
        db.session.commit()
    except IntegrityError:  # registered meanwhile by a concurrent request
        db.session.rollback()
        found = customer_for_key_hash(api_key_hash)
        assert found is not None
        return found
    return customer


def authenticate_customer(request: Request) -> BillingCustomer:
    """The active customer whose key is the request's bearer token, or 401.

    The lookup is by hash (an attacker cannot steer a digest's prefix, so the
    index lookup leaks nothing), and the found hash is compared again in
    constant time.
    """
    key_hash = hash_api_key(bearer_token(request))
    customer = customer_for_key_hash(key_hash)
    if (
        customer is None
        or not customer.is_active
        or not hmac.compare_digest(customer.api_key_hash, key_hash)
    ):
        raise AuthenticationError("unknown or inactive API key", field="Authorization")
    return customer
