"""Buying credit through Stripe: a Checkout Session, and auto-recharge off-session.

Credit is granted only when Stripe says the money came: on
``checkout.session.completed`` (paid) or ``checkout.session.async_payment_succeeded``
for a purchase, on ``payment_intent.succeeded`` for a recharge; never when the
session or the PaymentIntent is made. Each grant names its Stripe object
(``checkout:<id>``, ``recharge:<id>``), so a webhook delivered again, or after
another, grants nothing twice.

Auto-recharge: when a burn leaves the balance below the account's threshold, one
recharge is made for that crossing (its idempotency key names it, so the task
run twice charges once), at most ``recharge_daily_limit`` a UTC day, and none
while one is still pending. A payment that fails is recorded; after
``RECHARGE_FAILURES_TO_PAUSE`` failures in a row auto-recharge pauses until the
customer sets it again, and in between a failed one is retried no sooner than
``RECHARGE_RETRY_AFTER``.
"""

from __future__ import annotations

import logging
from datetime import datetime, time, timedelta
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any, Protocol

from sqlalchemy import func, select

from app.credits.ledger import add_grant, balance
from app.credits.models import CreditAccount, CreditRecharge, RechargeStatus
from app.customers.models import BillingCustomer
from app.errors import ValidationError
from app.extensions import db

log = logging.getLogger("usage_billing.credits")
RECHARGE_TASK = "credits.recharge"
RECHARGE_FAILURES_TO_PAUSE = 3
RECHARGE_RETRY_AFTER = timedelta(hours=1)
PURPOSE = "usage_billing_credits"  # the metadata that marks our sessions and intents
_CENT = Decimal("0.01")


class StripePayments(Protocol):
    """What buying credit needs of Stripe (``app.billing.gateway.StripeGateway``)."""

    def create_checkout_session(
        self,
        stripe_customer_id: str,
        amount_cents: int,
        success_url: str,
        cancel_url: str,
        metadata: dict[str, str],
        idempotency_key: str,
    ) -> tuple[str, str]: ...

    def charge_off_session(
        self,
        stripe_customer_id: str,
        payment_method: str,
        amount_cents: int,
        metadata: dict[str, str],
        idempotency_key: str,
    ) -> str: ...

    def payment_method_of(self, payment_intent: str) -> str | None: ...


def cents(amount: Decimal) -> int:
    """USD as Stripe charges it; a purchase is of whole cents."""
    if amount != amount.quantize(_CENT, ROUND_HALF_EVEN):
        raise ValidationError("amount is in whole cents", field="amount")
    return int(amount * 100)


def start_checkout(
    customer: BillingCustomer,
    amount: Decimal,
    success_url: str,
    cancel_url: str,
    stripe: StripePayments,
    now: datetime,
) -> tuple[str, str]:
    """A Stripe Checkout Session (mode payment) for ``amount`` of credit: (its id, its
    URL). The card is saved for auto-recharge; the credit comes with the webhook."""
    if not customer.stripe_customer_id:
        raise ValidationError("no Stripe customer for this key yet", field="Authorization")
    metadata = {"purpose": PURPOSE, "customer_id": str(customer.id), "amount": str(amount)}
    minute = now.strftime("%Y%m%d%H%M")  # a double click within a minute: one session
    key = f"checkout-{customer.id}-{amount}-{minute}"
    return stripe.create_checkout_session(
        customer.stripe_customer_id, cents(amount), success_url, cancel_url, metadata, key
    )


def _ours(obj: dict[str, Any]) -> int | None:
    metadata = obj.get("metadata") or {}
    if metadata.get("purpose") != PURPOSE:
        return None
    try:
        return int(metadata["customer_id"])
    except (KeyError, ValueError):
        return None


def checkout_paid(
    obj: dict[str, Any], stripe: StripePayments, now: datetime, max_event_age_days: int
) -> bool:
    """A paid Checkout Session of ours: grant its credit (once), keep its card."""
    customer_id = _ours(obj)
    if customer_id is None or obj.get("payment_status") != "paid":
        return False
    amount = Decimal(obj["metadata"]["amount"])
    _, new = add_grant(
        customer_id,
        amount,
        "purchased",
        f"checkout:{obj['id']}",
        now,
        max_event_age_days,
        note="bought through Stripe Checkout",
    )
    intent = obj.get("payment_intent")
    account = db.session.get(CreditAccount, customer_id)
    if new and account is not None and isinstance(intent, str):
        method = stripe.payment_method_of(intent)
        if method:
            account.payment_method = method
    return new


def recharge_succeeded(obj: dict[str, Any], now: datetime, max_event_age_days: int) -> bool:
    customer_id = _ours(obj)
    if customer_id is None:
        return False
    recharge = db.session.scalar(
        select(CreditRecharge).where(CreditRecharge.payment_intent == obj["id"])
    )
    amount = Decimal(obj["metadata"].get("amount", "0"))
    _, new = add_grant(
        customer_id,
        amount,
        "purchased",
        f"recharge:{obj['id']}",
        now,
        max_event_age_days,
        note="auto-recharge",
    )
    if recharge is not None:
        recharge.status = RechargeStatus.SUCCEEDED
        recharge.error = None
    return new


def recharge_failed(obj: dict[str, Any]) -> CreditRecharge | None:
    """A recharge's payment failed: recorded (the recharge, for the customer to be
    told; None when it was recorded already); repeated failures pause auto-recharge.
    A failure reported after the same payment succeeded changes nothing."""
    customer_id = _ours(obj)
    if customer_id is None:
        return None
    recharge = db.session.scalar(
        select(CreditRecharge).where(CreditRecharge.payment_intent == obj["id"])
    )
    if recharge is None or recharge.status in (RechargeStatus.SUCCEEDED, RechargeStatus.FAILED):
        return None
    error = (obj.get("last_payment_error") or {}).get("message") or "payment failed"
    recharge.status, recharge.error = RechargeStatus.FAILED, str(error)[:2000]
    db.session.flush()
    if _failures_in_a_row(customer_id) >= RECHARGE_FAILURES_TO_PAUSE:
        account = db.session.get(CreditAccount, customer_id)
        if account is not None and not account.recharge_paused:
            account.recharge_paused = True
            log.error(
                "auto-recharge paused after failed payments", extra={"customer_id": customer_id}
            )
    return recharge


def _failures_in_a_row(customer_id: int) -> int:
    statuses = db.session.scalars(
        select(CreditRecharge.status)
        .where(CreditRecharge.customer_id == customer_id)
        .order_by(CreditRecharge.id.desc())
        .limit(RECHARGE_FAILURES_TO_PAUSE)
    ).all()
    failures = 0
    for status in statuses:
        if status != RechargeStatus.FAILED:
            break
        failures += 1
    return failures


def recharge_due(account: CreditAccount, now: datetime) -> CreditRecharge | None:
    """The recharge this account needs now, recorded (the caller commits, then charges),
    or None: above its threshold, off, paused, one pending, the day's cap reached, or a
    failure too recent."""
    if (
        account.recharge_threshold is None
        or not account.recharge_amount
        or account.recharge_paused
        or not account.payment_method
        or balance(account.customer_id) >= account.recharge_threshold
    ):
        return None
    recharges = select(CreditRecharge).where(CreditRecharge.customer_id == account.customer_id)
    if db.session.scalar(recharges.where(CreditRecharge.status == RechargeStatus.PENDING)):
        return None
    midnight = datetime.combine(now.date(), time(), tzinfo=now.tzinfo)
    today = db.session.scalar(
        select(func.count())
        .select_from(CreditRecharge)
        .where(
            CreditRecharge.customer_id == account.customer_id, CreditRecharge.created_at >= midnight
        )
    )
    if (today or 0) >= account.recharge_daily_limit:
        return None
    last = db.session.scalar(recharges.order_by(CreditRecharge.id.desc()).limit(1))
    if (
        last is not None
        and last.status == RechargeStatus.FAILED
        and last.updated_at > now - RECHARGE_RETRY_AFTER
    ):
        return None
    number = db.session.scalar(
        select(func.count())
        .select_from(CreditRecharge)
        .where(CreditRecharge.customer_id == account.customer_id)
    )
    recharge = CreditRecharge(
        customer_id=account.customer_id,
        idempotency_key=f"recharge-{account.customer_id}-{(number or 0) + 1}",
        amount=account.recharge_amount,
    )
    db.session.add(recharge)
    db.session.flush()
    return recharge


def charge(recharge: CreditRecharge, stripe: StripePayments) -> str:
    """Make the recharge's PaymentIntent (off-session, confirmed): its id. Its
    idempotency key is the crossing's, so charging it twice charges once."""
    customer = db.session.get(BillingCustomer, recharge.customer_id)
    account = db.session.get(CreditAccount, recharge.customer_id)
    assert customer is not None and account is not None
    if not customer.stripe_customer_id or not account.payment_method:
        raise ValidationError("no saved payment method to recharge from", field="payment_method")
    metadata = {
        "purpose": PURPOSE,
        "customer_id": str(customer.id),
        "amount": str(recharge.amount),
        "recharge": recharge.idempotency_key,
    }
    intent = stripe.charge_off_session(
        customer.stripe_customer_id,
        account.payment_method,
        cents(recharge.amount),
        metadata,
        recharge.idempotency_key,
    )
    recharge.payment_intent = intent
    return intent
