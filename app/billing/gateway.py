"""The only code that talks to Stripe.

Every call carries an idempotency key and is retried here, with exponential
backoff and full jitter, on what Stripe says is transient: 429, 5xx, lost
connections and timeouts (a call that timed out may have been done: the retry's
idempotency key makes Stripe answer with that result instead of doing it again).
The SDK's own retries are off so that 429 (which the SDK does not retry) and
5xx follow one policy. A client-side rate limit keeps a report run
under Stripe's request rate.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Annotated, Any, TypeVar

import stripe
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, StringConstraints

from app.config import Settings
from app.errors import BillingRejected, BillingUnavailable, Conflict, ValidationError
from app.observability.metrics import STRIPE_ERRORS, STRIPE_RETRIES
from app.shapes import parse

log = logging.getLogger("usage_billing.stripe")
T = TypeVar("T")
WEBHOOK_TOLERANCE_SECONDS = 300


class _RateLimiter:
    """Spaces requests evenly at ``per_second``, across threads."""

    def __init__(self, per_second: float) -> None:
        self._interval = 1 / per_second
        self._next = 0.0
        self._lock = threading.Lock()

    def wait(self) -> None:
        with self._lock:
            now = time.monotonic()
            delay = self._next - now
            self._next = max(now, self._next) + self._interval
        if delay > 0:
            time.sleep(delay)


class StripeGateway:
    def __init__(self, settings: Settings) -> None:
        bases = {"api": settings.stripe_api_base} if settings.stripe_api_base else None
        self._client = stripe.StripeClient(
            settings.stripe_api_key.get_secret_value() or "sk_unset",
            base_addresses=bases,  # type: ignore[arg-type]
            max_network_retries=0,
            http_client=stripe.RequestsClient(timeout=settings.stripe_timeout_seconds),
        )
        self._settings = settings
        self._limiter = _RateLimiter(settings.stripe_max_requests_per_second)

    def _call(self, what: str, request: Callable[[], T], conflict_field: str | None = None) -> T:
        attempts = self._settings.stripe_max_attempts
        for attempt in range(1, attempts + 1):
            self._limiter.wait()
            try:
                return request()
            except (stripe.RateLimitError, stripe.APIConnectionError) as exc:
                STRIPE_ERRORS.labels(what, type(exc).__name__).inc()
                error: Exception = exc
            except stripe.IdempotencyError as exc:
                STRIPE_ERRORS.labels(what, type(exc).__name__).inc()
                raise Conflict(
                    f"{what}: an earlier request with other details is still remembered by "
                    "Stripe (24 h); repeat it with the same details",
                    field=conflict_field,
                ) from exc
            except stripe.StripeError as exc:
                STRIPE_ERRORS.labels(what, type(exc).__name__).inc()
                if (exc.http_status or 500) < 500:
                    raise BillingRejected(f"{what}: {exc.user_message or exc}") from exc
                error = exc
            if attempt == attempts:
                raise BillingUnavailable(
                    f"{what}: Stripe unavailable after {attempts} attempts: {error}"
                )
            STRIPE_RETRIES.labels(what).inc()
            cap = self._settings.stripe_retry_base_ms / 1000 * 2 ** (attempt - 1)
            delay = random.uniform(0, min(cap, 30.0))
            log.warning(
                "stripe %s failed (attempt %d), retrying in %.2fs: %s", what, attempt, delay, error
            )
            time.sleep(delay)
        raise AssertionError("unreachable")

    def create_customer(
        self, email: str, name: str, api_key_hash: str, idempotency_key: str
    ) -> str:
        customer = self._call(
            "create customer",
            lambda: self._client.v1.customers.create(
                params={"email": email, "name": name, "metadata": {"api_key_hash": api_key_hash}},
                options={"idempotency_key": idempotency_key},
            ),
            conflict_field="api_key",
        )
        return customer.id

    def send_meter_event(
        self,
        event_name: str,
        stripe_customer_id: str,
        value: int,
        identifier: str,
        timestamp: int,
    ) -> str:
        """Report ``value`` for a customer; the identifier doubles as the idempotency key.

        Stripe refusing the identifier as one it already holds means an earlier
        attempt got there (answered with an error, or not at all): the event is
        sent, once. Our identifiers are ours alone (``usage_reports``), so no
        other event can hold it.
        """

        def create() -> str:
            try:
                return self._client.v1.billing.meter_events.create(
                    params={
                        "event_name": event_name,
                        "payload": {"stripe_customer_id": stripe_customer_id, "value": str(value)},
                        "identifier": identifier,
                        "timestamp": timestamp,
                    },
                    options={"idempotency_key": identifier},
                ).identifier
            except stripe.InvalidRequestError as exc:
                if exc.param == "identifier" and "already exists" in str(exc.user_message or ""):
                    log.info("meter event %s was already recorded by Stripe", identifier)
                    return identifier
                raise

        return self._call("meter event", create)

    def meter_id(self, event_name: str) -> str:
        """The id of the active meter that takes ``event_name``'s events."""
        meters = self._call(
            "meter lookup", lambda: self._client.v1.billing.meters.list(params={"status": "active"})
        )
        for meter in meters.auto_paging_iter():
            if meter.event_name == event_name:
                return meter.id
        raise BillingRejected(f"no active Stripe meter takes the event name {event_name!r}")

    def daily_usage(
        self, meter_id: str, stripe_customer_id: str, first: date, last: date
    ) -> dict[date, Decimal]:
        """What Stripe's meter holds for the customer on each UTC day from ``first`` to
        ``last``: its event summaries, one per day (a day without events has none)."""
        start = datetime.combine(first, datetime.min.time(), tzinfo=UTC)
        end = datetime.combine(last + timedelta(days=1), datetime.min.time(), tzinfo=UTC)
        summaries = self._call(
            "meter event summaries",
            lambda: self._client.v1.billing.meters.event_summaries.list(
                meter_id,
                params={
                    "customer": stripe_customer_id,
                    "start_time": int(start.timestamp()),
                    "end_time": int(end.timestamp()),
                    "value_grouping_window": "day",
                    "limit": 100,
                },
            ),
        )
        usage: dict[date, Decimal] = {}
        for summary in summaries.auto_paging_iter():
            day = datetime.fromtimestamp(summary.start_time, UTC).date()
            # A float in Stripe's JSON; the values we send are whole numbers.
            usage[day] = usage.get(day, Decimal(0)) + Decimal(str(summary.aggregated_value))
        return usage

    def create_portal_session(
        self, stripe_customer_id: str, return_url: str, idempotency_key: str
    ) -> str:
        session = self._call(
            "portal session",
            lambda: self._client.v1.billing_portal.sessions.create(
                params={"customer": stripe_customer_id, "return_url": return_url},
                options={"idempotency_key": idempotency_key},
            ),
        )
        return session.url

    def create_checkout_session(
        self,
        stripe_customer_id: str,
        amount_cents: int,
        success_url: str,
        cancel_url: str,
        metadata: dict[str, str],
        idempotency_key: str,
    ) -> tuple[str, str]:
        """A Checkout Session (mode ``payment``) for prepaid credit, saving the card for
        off-session recharges: (its id, its URL)."""
        session = self._call(
            "checkout session",
            lambda: self._client.v1.checkout.sessions.create(
                params={
                    "mode": "payment",
                    "customer": stripe_customer_id,
                    "success_url": success_url,
                    "cancel_url": cancel_url,
                    "line_items": [
                        {
                            "quantity": 1,
                            "price_data": {
                                "currency": "usd",
                                "unit_amount": amount_cents,
                                "product_data": {"name": "Prepaid API credit"},
                            },
                        }
                    ],
                    "payment_intent_data": {
                        "setup_future_usage": "off_session",
                        "metadata": metadata,
                    },
                    "metadata": metadata,
                },
                options={"idempotency_key": idempotency_key},
            ),
        )
        return session.id, session.url or ""

    def charge_off_session(
        self,
        stripe_customer_id: str,
        payment_method: str,
        amount_cents: int,
        metadata: dict[str, str],
        idempotency_key: str,
    ) -> str:
        """Charge the saved card now, the customer away: the PaymentIntent's id. A card
        declined is no error here: the intent exists, and its webhook says it failed."""

        def create() -> str:
            try:
                return self._client.v1.payment_intents.create(
                    params={
                        "amount": amount_cents,
                        "currency": "usd",
                        "customer": stripe_customer_id,
                        "payment_method": payment_method,
                        "off_session": True,
                        "confirm": True,
                        "metadata": metadata,
                    },
                    options={"idempotency_key": idempotency_key},
                ).id
            except stripe.CardError as exc:
                intent = exc.error.payment_intent if exc.error else None
                if intent is not None and intent.id:
                    return str(intent.id)
                raise

        return self._call("recharge", create)

    def payment_method_of(self, payment_intent: str) -> str | None:
        intent = self._call(
            "payment intent", lambda: self._client.v1.payment_intents.retrieve(payment_intent)
        )
        method = intent.payment_method
        return method if isinstance(method, str) or method is None else method.id


def verify_webhook(
    payload: bytes, signature: str | None, secret: str, now: float | None = None
) -> StripeEvent:
    """The event Stripe signed, or a 400: no signature, a bad one, or one stamped more
    than 5 minutes from now, either way.

    The timestamp tolerance refuses a replay of an old delivery; a replay inside
    it is caught by the event id we record. Stripe's SDK bounds only the past: a
    timestamp ahead of the clock (a forged or a skewed one) is refused here.
    """
    if not secret:
        raise ValidationError("webhooks are not configured", field="Stripe-Signature")
    if not signature:
        raise ValidationError("missing Stripe-Signature header", field="Stripe-Signature")
    try:
        stripe.WebhookSignature.verify_header(
            payload.decode("utf-8"), signature, secret, WEBHOOK_TOLERANCE_SECONDS
        )
        event = json.loads(payload)
        stamped = int(dict(p.split("=", 1) for p in signature.split(",") if "=" in p)["t"])
        if stamped > (time.time() if now is None else now) + WEBHOOK_TOLERANCE_SECONDS:
            raise stripe.SignatureVerificationError("timestamp in the future", signature)
    except (
        stripe.SignatureVerificationError,
        UnicodeDecodeError,
        ValueError,
        RecursionError,
    ) as exc:
        raise ValidationError("invalid Stripe signature", field="Stripe-Signature") from exc
    return parse(StripeEvent, event)


_END_OF_CALENDAR = 253402300800  # 10000-01-01 in Unix seconds: later ones are no datetime


class StripeEventData(BaseModel):
    model_config = ConfigDict(extra="allow")

    object: dict[str, Any] = {}


class StripeEvent(BaseModel):
    """The fields of a signed Stripe event that we read; Stripe's others are kept as sent."""

    model_config = ConfigDict(extra="allow")

    id: Annotated[StrictStr, StringConstraints(min_length=1, max_length=100)]
    type: Annotated[StrictStr, StringConstraints(min_length=1, max_length=100)]
    created: Annotated[StrictInt, Field(ge=0, lt=_END_OF_CALENDAR)]
    data: StripeEventData
