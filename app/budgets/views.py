"""Budgets and alerts over HTTP: admins set budgets; a customer reads its own, sets a
lower limit of its own, says where its alerts go, and reads every alert and attempt."""

from __future__ import annotations

import logging
from datetime import datetime
from decimal import Decimal
from typing import Annotated, Literal

from flask import Blueprint, current_app
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
)

from app.budgets.admission import publish_customer
from app.budgets.models import AlertDelivery, Budget, BudgetAlert
from app.budgets.services import (
    BudgetSpec,
    alerts_of,
    budget_of,
    budget_period,
    budgets_of,
    create_budget,
    delete_budget,
    set_customer_limit,
    set_webhook,
    update_budget,
)
from app.budgets.spend import spent_in
from app.columns import utcnow
from app.contract import ADMIN, Answer, Day, Instant, Money, Quantity, operation
from app.customers.models import BillingCustomer
from app.customers.services import API_KEY
from app.errors import ValidationError
from app.extensions import db
from app.shapes import Id, PositiveAmount, Text, Whole

log = logging.getLogger("usage_billing.budgets")
budgets = Blueprint("budgets", __name__)

Threshold = Annotated[int, Whole(1, 100)]


class BudgetFields(BaseModel):
    model_config = ConfigDict(extra="forbid")

    limit: PositiveAmount
    thresholds: list[Threshold] = Field(default=[50, 80, 100], max_length=10)
    hard_limit: StrictBool = False


class BudgetUpdate(BaseModel):
    """What a PUT changes: each field given, and no other (at least one)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "anyOf": [
                {"required": [name], "properties": {name: {"not": {"type": "null"}}}}
                for name in ("limit", "thresholds", "hard_limit")
            ]
        },
    )

    limit: PositiveAmount | None = None
    thresholds: list[Threshold] | None = Field(default=None, max_length=10)
    hard_limit: StrictBool | None = None


class BudgetCreate(BudgetFields):
    """A budget (admin): per customer, or per key with ``api_key_id``."""

    metric: Literal["usd", "tokens"]
    period: Literal["day", "month", "billing_period"]
    api_key_id: Id | None = None


class CustomerLimit(BaseModel):
    """A customer's own limit on one of its budgets: at most the admin's; null removes it."""

    model_config = ConfigDict(extra="forbid")

    limit: PositiveAmount | None


class WebhookSet(BaseModel):
    """Where the caller's alerts go (https); null stops them. The answer holds the
    signing secret, once."""

    model_config = ConfigDict(extra="forbid")

    url: Annotated[str, Text(2000)] | None


class BudgetAnswer(Answer):
    """A budget with this period's spend, as admins and its customer read it."""

    id: int
    customer_id: int
    api_key_id: int | None
    metric: Literal["usd", "tokens"]
    period: Literal["day", "month", "billing_period"]
    limit: Quantity
    customer_limit: Quantity | None
    effective_limit: Quantity
    thresholds: list[int]
    hard_limit: bool
    period_start: Day
    period_end: Instant
    spent: Quantity
    calls: int
    used_percent: Money | None

    @classmethod
    def of(cls, budget: Budget, now: datetime) -> BudgetAnswer:
        period = budget_period(budget, now)
        spent, calls = spent_in(budget, period)
        limit = budget.effective_limit
        return cls(
            id=budget.id,
            customer_id=budget.customer_id,
            api_key_id=budget.api_key_id,
            metric=budget.metric,
            period=budget.period,
            limit=budget.limit_value,
            customer_limit=budget.customer_limit or None,
            effective_limit=limit,
            thresholds=budget.thresholds,
            hard_limit=budget.hard_limit,
            period_start=period.start,
            period_end=period.ends_at,
            spent=spent,
            calls=calls,
            used_percent=(spent * 100 / limit).quantize(Decimal("0.01")) if limit else None,
        )


class BudgetList(Answer):
    """Budgets with this period's spend."""

    budgets: list[BudgetAnswer]


class Deleted(Answer):
    """The budget is gone."""

    deleted: int


class AlertAttempt(Answer):
    at: Instant
    url: str
    sent_at: Instant | None
    status_code: int | None
    error: str | None


class AlertAnswer(Answer):
    """A budget's threshold reached (``budget.threshold_reached``), or a prepaid
    customer's notice (``credits.low_balance``, ``credits.expiring``,
    ``credits.recharge_failed``: no budget; ``spent`` is the amount, ``limit`` what it
    is measured against)."""

    id: str
    type: str
    budget_id: int | None
    threshold_percent: int
    period_start: Day
    spent: Quantity
    limit: Quantity
    status: str
    created_at: Instant
    delivered_at: Instant | None
    attempts: list[AlertAttempt]

    @classmethod
    def of(cls, alert: BudgetAlert) -> AlertAnswer:
        attempts = (
            db.session.query(AlertDelivery).filter_by(alert_id=alert.id).order_by(AlertDelivery.id)
        )
        return cls(
            id=f"alert_{alert.id}",
            type=str(alert.payload.get("type", "budget.threshold_reached")),
            budget_id=alert.budget_id,
            threshold_percent=alert.threshold,
            period_start=alert.period_start,
            spent=alert.spent,
            limit=alert.limit_value,
            status=alert.status,
            created_at=alert.created_at,
            delivered_at=alert.delivered_at,
            attempts=[
                AlertAttempt(
                    at=a.attempted_at,
                    url=a.url,
                    sent_at=a.sent_at,
                    status_code=a.status_code,
                    error=a.error,
                )
                for a in attempts
            ],
        )


class AlertList(Answer):
    """Alerts and every delivery attempt, newest first."""

    alerts: list[AlertAnswer]


class WebhookAnswer(Answer):
    """Where alerts go, and the secret they are signed with: shown only now."""

    url: str | None
    secret: str | None


_LIMIT_RULE = "A tokens budget's limit is a whole number."


def _limit(value: Decimal, metric: str) -> Decimal:
    if metric == "tokens" and value != value.to_integral_value():
        raise ValidationError("a tokens limit is a whole number", field="limit")
    return value


def _changed(customer_id: int) -> None:
    """Commit the change, then publish it to Redis (every API process sees it)."""
    db.session.commit()
    publish_customer(customer_id)


# -- admins ---------------------------------------------------------------------


@operation(
    budgets,
    "POST",
    "/v1/billing/customers/<customer_id>/budgets",
    summary="Set a budget (admin): per customer, or per key",
    auth=ADMIN,
    body=BudgetCreate,
    answers={201: BudgetAnswer},
    errors=(400, 401, 403, 404, 413, 415),
    rules=_LIMIT_RULE + " api_key_id is a key of this customer.",
)
def create(customer_id: int, body: BudgetCreate) -> tuple[BudgetAnswer, int]:
    spec = BudgetSpec(
        metric=body.metric,
        period=body.period,
        limit=_limit(body.limit, body.metric),
        thresholds=tuple(body.thresholds),
        hard_limit=body.hard_limit,
        api_key_id=body.api_key_id,
    )
    budget = create_budget(customer_id, spec)
    _changed(budget.customer_id)
    return BudgetAnswer.of(budget, utcnow()), 201


@operation(
    budgets,
    "GET",
    "/v1/billing/customers/<customer_id>/budgets",
    summary="A customer's budgets with this period's spend (admin)",
    auth=ADMIN,
    answers={200: BudgetList},
    errors=(401, 403, 404),
)
def list_for_admin(customer_id: int) -> BudgetList:
    now = utcnow()
    return BudgetList(budgets=[BudgetAnswer.of(b, now) for b in budgets_of(customer_id)])


@operation(
    budgets,
    "PUT",
    "/v1/billing/budgets/<budget_id>",
    summary="Change a budget's limit, thresholds or hardness (admin)",
    auth=ADMIN,
    body=BudgetUpdate,
    answers={200: BudgetAnswer},
    errors=(400, 401, 403, 404, 413, 415),
    rules=_LIMIT_RULE,
)
def update(budget_id: int, body: BudgetUpdate) -> BudgetAnswer:
    budget = budget_of(budget_id)
    given = {name for name in body.model_fields_set if getattr(body, name) is not None}
    if not given:
        raise ValidationError("give limit, thresholds or hard_limit to change", field="body")
    update_budget(
        budget,
        _limit(body.limit, budget.metric) if body.limit is not None else None,
        tuple(body.thresholds) if body.thresholds is not None else None,
        body.hard_limit,
    )
    _changed(budget.customer_id)
    return BudgetAnswer.of(budget, utcnow())


@operation(
    budgets,
    "DELETE",
    "/v1/billing/budgets/<budget_id>",
    summary="Remove a budget (admin)",
    auth=ADMIN,
    answers={200: Deleted},
    errors=(401, 403, 404),
)
def delete(budget_id: int) -> Deleted:
    budget = budget_of(budget_id)
    delete_budget(budget)
    _changed(budget.customer_id)
    return Deleted(deleted=budget_id)


@operation(
    budgets,
    "GET",
    "/v1/billing/customers/<customer_id>/alerts",
    summary="A customer's alerts and every delivery attempt (admin)",
    auth=ADMIN,
    answers={200: AlertList},
    errors=(401, 403, 404),
)
def alerts_for_admin(customer_id: int) -> AlertList:
    budgets_of(customer_id)  # 404 for an unknown customer
    return AlertList(alerts=[AlertAnswer.of(a) for a in alerts_of(customer_id)])


# -- the customer itself ---------------------------------------------------------


@operation(
    budgets,
    "GET",
    "/v1/billing/budgets",
    summary="The caller's budgets with this period's spend",
    auth=API_KEY,
    answers={200: BudgetList},
    errors=(401,),
)
def own_budgets(caller: BillingCustomer) -> BudgetList:
    return budgets_answer(caller)


def budgets_answer(customer: BillingCustomer) -> BudgetList:
    """The customer's budgets with this period's spend (its own, as the API answers)."""
    now = utcnow()
    return BudgetList(budgets=[BudgetAnswer.of(b, now) for b in budgets_of(customer.id)])


@operation(
    budgets,
    "PUT",
    "/v1/billing/budgets/<budget_id>/customer-limit",
    summary="The caller's own lower limit on one of its budgets (null removes it)",
    auth=API_KEY,
    body=CustomerLimit,
    answers={200: BudgetAnswer},
    errors=(400, 401, 404, 413, 415),
    rules=_LIMIT_RULE + " A customer's limit is at most the budget's.",
)
def own_limit(budget_id: int, body: CustomerLimit, caller: BillingCustomer) -> BudgetAnswer:
    budget = budget_of(budget_id, customer_id=caller.id)
    limit = None if body.limit is None else _limit(body.limit, budget.metric)
    set_customer_limit(budget, limit)
    _changed(caller.id)
    return BudgetAnswer.of(budget, utcnow())


@operation(
    budgets,
    "PUT",
    "/v1/billing/alerts/webhook",
    summary="Where the caller's alerts go; the answer holds the secret, once",
    auth=API_KEY,
    body=WebhookSet,
    answers={200: WebhookAnswer},
    errors=(400, 401, 413, 415),
    rules="url is https to a public address (http and loopback only with ALERT_ALLOW_LOOPBACK)"
    " and carries no credentials.",
)
def own_webhook(body: WebhookSet, caller: BillingCustomer) -> WebhookAnswer:
    secret = set_webhook(caller, body.url, current_app.config["SETTINGS"])
    db.session.commit()
    return WebhookAnswer(url=body.url, secret=secret)


@operation(
    budgets,
    "GET",
    "/v1/billing/alerts",
    summary="The caller's alerts and every delivery attempt",
    auth=API_KEY,
    answers={200: AlertList},
    errors=(401,),
)
def own_alerts(caller: BillingCustomer) -> AlertList:
    return alerts_answer(caller)


def alerts_answer(customer: BillingCustomer) -> AlertList:
    """The customer's alerts and every delivery attempt (its own, as the API answers)."""
    return AlertList(alerts=[AlertAnswer.of(a) for a in alerts_of(customer.id)])
