"""Prepaid credits over HTTP: admins grant, void, refund and adjust, and say how a
customer runs out; a customer reads its balance, grants and ledger, buys credit
through Stripe Checkout, and sets its auto-recharge.

Every change is committed, then announced (``announce``), so admission in every
API process decides the customer's next call on its new balance.
"""

from __future__ import annotations

import secrets
from datetime import datetime
from decimal import Decimal
from typing import Annotated, Literal

from flask import Blueprint, current_app
from pydantic import BaseModel, ConfigDict, Field

from app.columns import utcnow
from app.contract import ADMIN, Answer, Instant, Money, operation
from app.credits.ledger import (
    account_of,
    add_grant,
    adjust,
    balance,
    grant_of,
    grants_of,
    open_account,
    refund_grant,
    remaining,
    uncovered,
    void_grant,
)
from app.credits.models import CreditAccount, CreditEntry, CreditGrant, Overage
from app.credits.purchases import cents, start_checkout
from app.customers.keys import announce
from app.customers.models import BillingCustomer
from app.customers.services import API_KEY
from app.errors import NotFound, ValidationError
from app.extensions import db
from app.registry import services
from app.security import allowed_return_url
from app.shapes import Amount, DecimalText, Text, Whole

# One credit movement (a grant, a refund, an adjustment, a recharge) is at most this
# many USD: what every ledger backend holds in a row (the embedded SQLite default
# counts 10^-12 USD in a 64-bit integer, 9.2 million USD at most).
MOST_CREDIT = Decimal(1_000_000)
PositiveAmount = Annotated[
    Decimal,
    DecimalText(
        f"a decimal string above zero, at most 12 places and {MOST_CREDIT} USD",
        above_zero=True,
        most=MOST_CREDIT,
    ),
]

credits = Blueprint("credits", __name__)
ENTRIES_SHOWN = 100


class GrantCreate(BaseModel):
    """Credit for a customer (admin): purchased elsewhere, or promotional."""

    model_config = ConfigDict(extra="forbid")

    amount: PositiveAmount
    category: Literal["purchased", "promotional"] = "promotional"
    priority: Annotated[int, Whole(0, 100)] = 50
    expires_at: datetime | None = Field(default=None, description="ISO 8601 with an offset")
    note: Annotated[str, Text(500)] | None = None


class RefundCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    amount: PositiveAmount
    note: Annotated[str, Text(500)] | None = None


class AdjustmentCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    amount: Annotated[str, Field(pattern=r"^-?\d{1,12}(\.\d{1,12})?$")]
    note: Annotated[str, Text(500)]


class AccountSet(BaseModel):
    """How a customer runs out (admin), and below what balance it is warned."""

    model_config = ConfigDict(extra="forbid")

    overage: Literal["block", "bill"]
    low_balance_at: Amount | None = None


class AutoRecharge(BaseModel):
    """The customer's auto-recharge: below ``threshold``, buy ``amount`` with the card
    saved at its last Checkout. Setting it again resumes one paused by failures."""

    model_config = ConfigDict(extra="forbid")

    threshold: PositiveAmount
    amount: PositiveAmount
    daily_limit: Annotated[int, Whole(1, 20)] = 3


class CheckoutCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    amount: PositiveAmount
    success_url: Annotated[str, Text(2000)]
    cancel_url: Annotated[str, Text(2000)]


class GrantAnswer(Answer):
    id: int
    amount: Money
    remaining: Money
    category: str
    priority: int
    effective_at: Instant
    expires_at: Instant | None
    closed_at: Instant | None
    source: str
    note: str | None

    @classmethod
    def of(cls, grant: CreditGrant) -> GrantAnswer:
        return cls(
            id=grant.id,
            amount=grant.amount,
            remaining=remaining(grant),
            category=grant.category,
            priority=grant.priority,
            effective_at=grant.effective_at,
            expires_at=grant.expires_at,
            closed_at=grant.closed_at,
            source=grant.source,
            note=grant.note,
        )


class EntryAnswer(Answer):
    id: int
    kind: str
    amount: Money
    at: Instant
    grant_id: int | None
    note: str | None


class RechargeAnswer(Answer):
    threshold: Money | None
    amount: Money | None
    daily_limit: int
    paused: bool
    card_saved: bool


class CreditsAnswer(Answer):
    """A customer's balance (the sum of its ledger), its grants, its latest entries,
    and what credits did not cover."""

    customer_id: int
    balance: Money
    overage: Overage
    uncovered: Money
    low_balance_at: Money | None
    auto_recharge: RechargeAnswer
    grants: list[GrantAnswer]
    entries: list[EntryAnswer]

    @classmethod
    def of(cls, account: CreditAccount) -> CreditsAnswer:
        customer_id = account.customer_id
        entries = (
            db.session.query(CreditEntry)
            .filter_by(customer_id=customer_id)
            .order_by(CreditEntry.id.desc())
            .limit(ENTRIES_SHOWN)
        )
        return cls(
            customer_id=customer_id,
            balance=balance(customer_id),
            overage=Overage(account.overage),
            uncovered=uncovered(customer_id),
            low_balance_at=account.low_balance_at,
            auto_recharge=RechargeAnswer(
                threshold=account.recharge_threshold,
                amount=account.recharge_amount,
                daily_limit=account.recharge_daily_limit,
                paused=account.recharge_paused,
                card_saved=account.payment_method is not None,
            ),
            grants=[GrantAnswer.of(g) for g in grants_of(customer_id)],
            entries=[
                EntryAnswer(
                    id=e.id, kind=e.kind, amount=e.amount, at=e.at, grant_id=e.grant_id, note=e.note
                )
                for e in entries
            ],
        )


class PrepaidAnswer(Answer):
    """The dashboard's view of the caller's credits: whether it is prepaid, and if so
    what ``GET /v1/billing/credits`` answers."""

    prepaid: bool
    credits: CreditsAnswer | None


def prepaid_answer(customer: BillingCustomer) -> PrepaidAnswer:
    account = account_of(customer.id)
    return PrepaidAnswer(
        prepaid=account is not None, credits=None if account is None else CreditsAnswer.of(account)
    )


class CheckoutAnswer(Answer):
    """Where to send the customer to pay; the credit comes when Stripe says it is paid."""

    id: str
    url: str


def _settings_age() -> int:
    return int(current_app.config["SETTINGS"].max_event_age_days)


def _account(customer_id: int) -> CreditAccount:
    account = account_of(customer_id)
    if account is None:
        raise NotFound(f"customer {customer_id} has no credits", field="customer_id")
    return account


# -- admins ---------------------------------------------------------------------


@operation(
    credits,
    "GET",
    "/v1/billing/customers/<customer_id>/credits",
    summary="A customer's credits: balance, grants and ledger (admin)",
    auth=ADMIN,
    answers={200: CreditsAnswer},
    errors=(401, 403, 404),
)
def credits_for_admin(customer_id: int) -> CreditsAnswer:
    return CreditsAnswer.of(_account(customer_id))


@operation(
    credits,
    "PUT",
    "/v1/billing/customers/<customer_id>/credits",
    summary="Make a customer prepaid, and say how it runs out (admin)",
    auth=ADMIN,
    body=AccountSet,
    answers={200: CreditsAnswer},
    errors=(400, 401, 403, 404, 413, 415),
)
def set_account(customer_id: int, body: AccountSet) -> CreditsAnswer:
    account = open_account(customer_id, utcnow(), _settings_age(), Overage(body.overage))
    account.overage = body.overage
    account.low_balance_at = body.low_balance_at
    announce(customer_id)
    return CreditsAnswer.of(account)


@operation(
    credits,
    "POST",
    "/v1/billing/customers/<customer_id>/credits/grants",
    summary="Grant a customer credit (admin)",
    auth=ADMIN,
    body=GrantCreate,
    answers={201: GrantAnswer},
    errors=(400, 401, 403, 404, 413, 415),
    rules="expires_at is after now.",
)
def create_grant(customer_id: int, body: GrantCreate) -> tuple[GrantAnswer, int]:
    now = utcnow()
    if body.expires_at is not None and body.expires_at.tzinfo is None:
        raise ValidationError("expires_at needs an offset (Z or +hh:mm)", field="expires_at")
    grant, _ = add_grant(
        customer_id,
        body.amount,
        body.category,
        f"admin:{secrets.token_hex(16)}",
        now,
        _settings_age(),
        priority=body.priority,
        expires_at=body.expires_at,
        note=body.note,
    )
    announce(customer_id)
    return GrantAnswer.of(grant), 201


@operation(
    credits,
    "POST",
    "/v1/billing/credits/grants/<grant_id>/void",
    summary="Withdraw what is left of a grant (admin)",
    auth=ADMIN,
    answers={200: GrantAnswer},
    errors=(401, 403, 404, 409),
)
def void(grant_id: int) -> GrantAnswer:
    grant = grant_of(grant_id)
    void_grant(grant, utcnow(), "voided by an admin")
    announce(grant.customer_id)
    return GrantAnswer.of(grant)


@operation(
    credits,
    "POST",
    "/v1/billing/credits/grants/<grant_id>/refund",
    summary="Give back part of a purchased grant's unspent credit (admin)",
    auth=ADMIN,
    body=RefundCreate,
    answers={200: GrantAnswer},
    errors=(400, 401, 403, 404, 409, 413, 415),
    rules="Only purchased credit, at most what is left of it.",
)
def refund(grant_id: int, body: RefundCreate) -> GrantAnswer:
    grant = grant_of(grant_id)
    refund_grant(grant, body.amount, utcnow(), body.note)
    announce(grant.customer_id)
    return GrantAnswer.of(grant)


@operation(
    credits,
    "POST",
    "/v1/billing/customers/<customer_id>/credits/adjustments",
    summary="Correct a customer's balance either way, with the reason (admin)",
    auth=ADMIN,
    body=AdjustmentCreate,
    answers={201: EntryAnswer},
    errors=(400, 401, 403, 404, 413, 415),
    rules="amount is not zero; the customer has credits.",
)
def create_adjustment(customer_id: int, body: AdjustmentCreate) -> tuple[EntryAnswer, int]:
    if abs(Decimal(body.amount)) > MOST_CREDIT:
        raise ValidationError(f"amount is at most {MOST_CREDIT} either way", field="amount")
    entry = adjust(customer_id, Decimal(body.amount), utcnow(), body.note)
    db.session.flush()
    announce(customer_id)
    answer = EntryAnswer(
        id=entry.id,
        kind=entry.kind,
        amount=entry.amount,
        at=entry.at,
        grant_id=None,
        note=entry.note,
    )
    return answer, 201


# -- the customer itself ---------------------------------------------------------


@operation(
    credits,
    "GET",
    "/v1/billing/credits",
    summary="The caller's credits: balance, grants and ledger",
    auth=API_KEY,
    answers={200: CreditsAnswer},
    errors=(401, 404),
)
def own_credits(caller: BillingCustomer) -> CreditsAnswer:
    return CreditsAnswer.of(_account(caller.id))


@operation(
    credits,
    "PUT",
    "/v1/billing/credits/auto-recharge",
    summary="The caller's auto-recharge: below a threshold, buy an amount",
    auth=API_KEY,
    body=AutoRecharge,
    answers={200: CreditsAnswer},
    errors=(400, 401, 404, 413, 415),
    rules="Amounts in whole cents; the card is the one saved at the caller's last Checkout.",
)
def own_recharge(body: AutoRecharge, caller: BillingCustomer) -> CreditsAnswer:
    account = _account(caller.id)
    for amount in (body.threshold, body.amount):
        cents(amount)  # refuses a fraction of a cent
    account.recharge_threshold = body.threshold
    account.recharge_amount = body.amount
    account.recharge_daily_limit = body.daily_limit
    account.recharge_paused = False
    announce(caller.id)
    return CreditsAnswer.of(account)


@operation(
    credits,
    "POST",
    "/v1/billing/credits/checkout",
    summary="A Stripe Checkout Session to buy credit; granted once Stripe says it is paid",
    auth=API_KEY,
    body=CheckoutCreate,
    answers={200: CheckoutAnswer},
    errors=(400, 401, 413, 415, 502, 503),
    rules="Amounts in whole cents; both URLs on BILLING_PORTAL_ALLOWED_ORIGINS.",
)
def checkout(body: CheckoutCreate, caller: BillingCustomer) -> CheckoutAnswer:
    origins = current_app.config["SETTINGS"].billing_portal_allowed_origins
    success = allowed_return_url(body.success_url, origins, "success_url")
    cancel = allowed_return_url(body.cancel_url, origins, "cancel_url")
    session_id, url = start_checkout(
        caller, body.amount, success, cancel, services().stripe, utcnow()
    )
    return CheckoutAnswer(id=session_id, url=url)
