"""Customers: who is calling (API keys resolve by their hash), onboarding, and the Stripe link.

A customer is created locally first, so onboarding never waits on Stripe and
works with no Stripe key at all (the embedded default): usage is metered from
the first call. The link to a Stripe customer is made in the background (the
``billing.link_customer`` task, retried until Stripe answers), and the daily
report first links whoever is still unlinked, in case that task was never queued.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable
from enum import StrEnum
from typing import Any, Protocol

from flask import Request, request
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from app.config import Settings
from app.contract import Auth
from app.customers.keys import keys_changed
from app.customers.models import ApiKey, BillingCustomer
from app.dialect import one_of
from app.errors import AuthenticationError, BillingRejected, BillingUnavailable, Conflict
from app.extensions import db
from app.observability.metrics import EVENTS_UNATTRIBUTED
from app.registry import services
from app.security import bearer_token, hash_api_key

log = logging.getLogger("usage_billing.customers")

LINK_TASK = "billing.link_customer"


class LinkState(StrEnum):
    LINKED = "linked"
    PENDING = "pending"  # made in the background, or by the next report
    NOT_CONFIGURED = "not_configured"  # no Stripe key: metered, never billed


class StripeCustomers(Protocol):
    """What linking needs of Stripe (``app.billing.gateway.StripeGateway`` has it)."""

    def create_customer(
        self, email: str, name: str, api_key_hash: str, idempotency_key: str
    ) -> str: ...


def customer_for_key_hash(key_hash: str, *, revoked: bool = True) -> BillingCustomer | None:
    """The customer holding this key (also a revoked one, unless ``revoked=False``)."""
    query = (
        select(BillingCustomer)
        .join(ApiKey, ApiKey.customer_id == BillingCustomer.id)
        .where(ApiKey.key_hash == key_hash)
    )
    if not revoked:
        query = query.where(ApiKey.revoked_at.is_(None))
    return db.session.scalar(query)


def register_customer(
    email: str, name: str, api_key_hash: str, company: str | None = None
) -> BillingCustomer:
    """A new customer, with this key as its first; ``Conflict`` (409) when the key
    already belongs to a customer: onboarding creates, it never hands back another
    customer as if it were new."""
    existing = customer_for_key_hash(api_key_hash)
    if existing is not None:
        raise _taken(existing)
    customer = BillingCustomer(email=email, name=name, api_key_hash=api_key_hash, company=company)
    db.session.add(customer)
    try:
        db.session.flush()
        db.session.add(ApiKey(customer_id=customer.id, key_hash=api_key_hash, label="registered"))
        db.session.commit()
    except IntegrityError:  # registered meanwhile by a concurrent request
        db.session.rollback()
        found = customer_for_key_hash(api_key_hash)
        assert found is not None
        raise _taken(found) from None
    keys_changed.send(customer.id)  # admission knows the key from now on
    return customer


def _taken(customer: BillingCustomer) -> Conflict:
    return Conflict(f"this API key already belongs to customer {customer.id}", field="api_key")


def count_unattributed(events: Iterable[Any]) -> int:
    """Count (``ub_events_unattributed_total``) the events of keys no customer holds:
    calls no one can be billed for, which admission refuses only when it enforces.
    One lookup of the batch's few distinct keys."""
    by_key: Counter[str] = Counter(
        event["api_key_hash"]
        for event in events
        if isinstance(event, dict) and isinstance(event.get("api_key_hash"), str)
    )
    if not by_key:
        return 0
    known = set(
        db.session.scalars(
            select(ApiKey.key_hash).where(one_of(ApiKey.key_hash, "hashes")),
            {"hashes": list(by_key)},
        )
    )
    unattributed = sum(n for key_hash, n in by_key.items() if key_hash not in known)
    if unattributed:
        EVENTS_UNATTRIBUTED.inc(unattributed)
    return unattributed


def authenticate_customer(request: Request) -> BillingCustomer:
    """The active customer whose live key is the request's bearer token, or 401.

    The lookup is by hash (an attacker cannot steer a digest's prefix, so the
    index lookup leaks nothing). A revoked key is refused like an unknown one.
    """
    customer = customer_for_key_hash(hash_api_key(bearer_token(request)), revoked=False)
    if customer is None or not customer.is_active:
        raise AuthenticationError("unknown, revoked or inactive API key", field="Authorization")
    return customer


API_KEY = Auth(
    "apiKey",
    {"type": "http", "scheme": "bearer", "description": "the customer's API key"},
    lambda: authenticate_customer(request),
    passes_caller=True,
)
"""A customer calling with its own key: the view gets the customer as ``caller``."""


def link_state(customer: BillingCustomer, settings: Settings) -> LinkState:
    if customer.stripe_customer_id:
        return LinkState.LINKED
    return LinkState.PENDING if settings.stripe_api_key else LinkState.NOT_CONFIGURED


def link_stripe_customer(customer: BillingCustomer, stripe: StripeCustomers) -> str:
    """Create (once) the Stripe customer for a local one and return its id.

    A retry after a crash before our commit reuses the idempotency key, so
    Stripe returns the customer it already made instead of a second one.
    """
    if customer.stripe_customer_id:
        return customer.stripe_customer_id
    customer.stripe_customer_id = stripe.create_customer(
        email=customer.email,
        name=customer.name,
        api_key_hash=customer.api_key_hash,
        idempotency_key=f"customer-{customer.api_key_hash}",
    )
    db.session.commit()
    return customer.stripe_customer_id


def request_link(customer: BillingCustomer) -> None:
    """Queue the link; a broker that is down only delays it to the next report."""
    try:
        services().celery.send_task(LINK_TASK, args=[customer.id])
    except Exception as exc:  # noqa: BLE001 - whatever the broker raised, onboarding stands
        log.warning("could not queue the Stripe link of customer %s: %s", customer.id, exc)


def link_unlinked_customers(settings: Settings, stripe: StripeCustomers) -> tuple[int, int]:
    """Link every active customer that has no Stripe customer yet: (linked, failed)."""
    if not settings.stripe_api_key:
        return 0, 0
    unlinked = db.session.scalars(
        select(BillingCustomer).where(
            BillingCustomer.is_active.is_(True), BillingCustomer.stripe_customer_id.is_(None)
        )
    ).all()
    linked = failed = 0
    for customer in unlinked:
        try:
            link_stripe_customer(customer, stripe)
        except (BillingUnavailable, BillingRejected) as exc:
            db.session.rollback()
            failed += 1
            log.error("customer %s not linked to Stripe: %s", customer.id, exc)
            continue
        linked += 1
    return linked, failed
