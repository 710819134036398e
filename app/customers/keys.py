"""Issuing, listing, revoking and rotating a customer's API keys.

A key the service issues is ``ubk_`` and 43 URL-safe characters: 256 random
bits from ``secrets``, recognisable at a glance (and by secret scanners) by its
prefix. It is returned once, when issued; only its SHA-256 hash is stored, with
its first characters so a person can tell keys apart.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from blinker import Namespace
from sqlalchemy import select

from app.columns import utcnow
from app.customers.models import ApiKey, BillingCustomer
from app.errors import Conflict, NotFound
from app.extensions import db
from app.security import hash_api_key

# Sent with the customer's id after its keys, or what admission decides its calls on
# (its credits), change; the budgets publish the change to Redis, where admission
# reads whether a key is revoked and what its customer may still spend.
keys_changed = Namespace().signal("keys-changed")
KEY_PREFIX = "ubk_"
_SHOWN = 12  # characters of an issued key kept to tell keys apart: the prefix and 8 more


@dataclass(frozen=True)
class IssuedKey:
    """A new key: the stored row, and the raw key, which exists only in this answer."""

    key: ApiKey
    raw: str


def _customer(customer_id: int) -> BillingCustomer:
    customer = db.session.get(BillingCustomer, customer_id)
    if customer is None:
        raise NotFound(f"no customer {customer_id}", field="customer_id")
    return customer


def _key(key_id: int) -> ApiKey:
    key = db.session.get(ApiKey, key_id)
    if key is None:
        raise NotFound(f"no API key {key_id}", field="key_id")
    return key


def _new_key(customer_id: int, label: str) -> IssuedKey:
    raw = KEY_PREFIX + secrets.token_urlsafe(32)
    key = ApiKey(
        customer_id=customer_id, key_hash=hash_api_key(raw), prefix=raw[:_SHOWN], label=label
    )
    db.session.add(key)
    return IssuedKey(key, raw)


def announce(customer_id: int) -> None:
    """Commit a change to what admission decides a customer's calls on (its keys,
    credits, rate limits), then tell every API process (``keys_changed``): the
    next call is decided on it."""
    db.session.commit()
    keys_changed.send(customer_id)


def issue_key(customer_id: int, label: str) -> IssuedKey:
    issued = _new_key(_customer(customer_id).id, label)
    announce(customer_id)
    return issued


def keys_of(customer_id: int) -> list[ApiKey]:
    """Every key of the customer, revoked ones too, oldest first."""
    _customer(customer_id)
    return list(
        db.session.scalars(
            select(ApiKey).where(ApiKey.customer_id == customer_id).order_by(ApiKey.id)
        )
    )


def revoke_key(key_id: int) -> ApiKey:
    """Revoke a key from now on; revoking it again changes nothing."""
    key = _key(key_id)
    if key.revoked_at is None:
        key.revoked_at = utcnow()
        announce(key.customer_id)
    return key


def rotate_key(key_id: int) -> IssuedKey:
    """A new key with the same label, and the old one revoked, in one transaction."""
    old = _key(key_id)
    if old.revoked_at is not None:
        raise Conflict(f"API key {key_id} is revoked; issue a new one", field="key_id")
    issued = _new_key(old.customer_id, old.label)
    old.revoked_at = utcnow()
    announce(old.customer_id)
    return issued
