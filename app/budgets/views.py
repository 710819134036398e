"""Budgets and alerts over HTTP: admins set budgets; a customer reads its own, sets a
lower limit of its own, says where its alerts go, and reads every alert and attempt."""

from __future__ import annotations

import logging
from decimal import Decimal
from typing import Annotated, Any, Literal

from flask import Blueprint, current_app, request
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
)

from app.budgets.admission import publish_customer
from app.budgets.models import AlertDelivery, BudgetAlert
from app.budgets.services import (
    BudgetSpec,
    alerts_of,
    budget_of,
    budgets_of,
    create_budget,
    delete_budget,
    describe_budget,
    set_customer_limit,
    set_webhook,
    update_budget,
)
from app.customers.models import BillingCustomer
from app.customers.services import authenticate_customer
from app.errors import ValidationError
from app.extensions import db
from app.models.types import amount_str, utcnow
from app.security import require_token
from app.shapes import MAX_ID, Amount, json_body, parse, path_id, text

log = logging.getLogger("usage_billing.budgets")
budgets = Blueprint("budgets", __name__)

Threshold = Annotated[StrictInt, Field(ge=1, le=100)]


class BudgetFields(BaseModel):
    model_config = ConfigDict(extra="forbid")

    limit: Amount
    thresholds: list[Threshold] = Field(default=[50, 80, 100], max_length=10)
    hard_limit: StrictBool = False


class BudgetUpdate(BaseModel):
    """What a PUT changes: each field given, and no other (at least one)."""

    model_config = ConfigDict(extra="forbid")

    limit: Amount | None = None
    thresholds: list[Threshold] | None = Field(default=None, max_length=10)
    hard_limit: StrictBool | None = None


class BudgetCreate(BudgetFields):
    """A budget (admin): per customer, or per key with ``api_key_id``."""

    metric: Literal["usd", "tokens"]
    period: Literal["day", "month", "billing_period"]
    api_key_id: Annotated[StrictInt, Field(ge=1, le=MAX_ID)] | None = None


class CustomerLimit(BaseModel):
    """A customer's own limit on one of its budgets: at most the admin's; null removes it."""

    model_config = ConfigDict(extra="forbid")

    limit: Amount | None


class WebhookSet(BaseModel):
    """Where the caller's alerts go (https); null stops them. The answer holds the
    signing secret, once."""

    model_config = ConfigDict(extra="forbid")

    url: text(2000) | None


def _limit(value: Decimal, metric: str) -> Decimal:
    if value <= 0:
        raise ValidationError("limit must be above zero", field="limit")
    if metric == "tokens" and value != value.to_integral_value():
        raise ValidationError("a tokens limit is a whole number", field="limit")
    return value


def _admin() -> None:
    require_token(request, current_app.config["SETTINGS"].admin_token, "admin")


def _alert(alert: BudgetAlert) -> dict[str, Any]:
    attempts = (
        db.session.query(AlertDelivery).filter_by(alert_id=alert.id).order_by(AlertDelivery.id)
    )
    return {
        "id": f"alert_{alert.id}",
        "budget_id": alert.budget_id,
        "threshold_percent": alert.threshold,
        "period_start": alert.period_start.isoformat(),
        "spent": amount_str(alert.spent),
        "limit": amount_str(alert.limit_value),
        "status": alert.status,
        "created_at": alert.created_at.isoformat(),
        "delivered_at": alert.delivered_at.isoformat() if alert.delivered_at else None,
        "attempts": [
            {
                "at": a.attempted_at.isoformat(),
                "url": a.url,
                "sent_at": a.sent_at.isoformat() if a.sent_at else None,
                "status_code": a.status_code,
                "error": a.error,
            }
            for a in attempts
        ],
    }


# -- admins ---------------------------------------------------------------------


@budgets.post("/v1/billing/customers/<customer_id>/budgets")
def create(customer_id: str) -> tuple[dict[str, Any], int]:
    _admin()
    body = parse(BudgetCreate, json_body(request))
    spec = BudgetSpec(
        metric=body.metric,
        period=body.period,
        limit=_limit(body.limit, body.metric),
        thresholds=tuple(body.thresholds),
        hard_limit=body.hard_limit,
        api_key_id=body.api_key_id,
    )
    budget = create_budget(path_id(customer_id, "customer_id"), spec)
    publish_customer(budget.customer_id)
    return describe_budget(budget, utcnow()), 201


@budgets.get("/v1/billing/customers/<customer_id>/budgets")
def list_for_admin(customer_id: str) -> dict[str, Any]:
    _admin()
    now = utcnow()
    return {
        "budgets": [
            describe_budget(b, now) for b in budgets_of(path_id(customer_id, "customer_id"))
        ]
    }


@budgets.put("/v1/billing/budgets/<budget_id>")
def update(budget_id: str) -> dict[str, Any]:
    _admin()
    budget = budget_of(path_id(budget_id, "budget_id"))
    body = parse(BudgetUpdate, json_body(request))
    given = {name for name in body.model_fields_set if getattr(body, name) is not None}
    if not given:
        raise ValidationError("give limit, thresholds or hard_limit to change", field="body")
    update_budget(
        budget,
        _limit(body.limit, budget.metric) if body.limit is not None else None,
        tuple(body.thresholds) if body.thresholds is not None else None,
        body.hard_limit,
    )
    publish_customer(budget.customer_id)
    return describe_budget(budget, utcnow())


@budgets.delete("/v1/billing/budgets/<budget_id>")
def delete(budget_id: str) -> dict[str, Any]:
    _admin()
    budget = budget_of(path_id(budget_id, "budget_id"))
    customer_id = budget.customer_id
    delete_budget(budget)
    publish_customer(customer_id)
    return {"deleted": int(budget_id)}


@budgets.get("/v1/billing/customers/<customer_id>/alerts")
def alerts_for_admin(customer_id: str) -> dict[str, Any]:
    _admin()
    budgets_of(path_id(customer_id, "customer_id"))  # 404 for an unknown customer
    return {"alerts": [_alert(a) for a in alerts_of(int(customer_id))]}


# -- the customer itself ---------------------------------------------------------


@budgets.get("/v1/billing/budgets")
def own_budgets() -> dict[str, Any]:
    return budgets_answer(authenticate_customer(request))


def budgets_answer(customer: BillingCustomer) -> dict[str, Any]:
    """The customer's budgets with this period's spend (its own, as the API answers)."""
    now = utcnow()
    return {"budgets": [describe_budget(b, now) for b in budgets_of(customer.id)]}


@budgets.put("/v1/billing/budgets/<budget_id>/customer-limit")
def own_limit(budget_id: str) -> dict[str, Any]:
    customer = authenticate_customer(request)
    budget = budget_of(path_id(budget_id, "budget_id"), customer_id=customer.id)
    body = parse(CustomerLimit, json_body(request))
    limit = None if body.limit is None else _limit(body.limit, budget.metric)
    set_customer_limit(budget, limit)
    publish_customer(customer.id)
    return describe_budget(budget, utcnow())


@budgets.put("/v1/billing/alerts/webhook")
def own_webhook() -> dict[str, Any]:
    customer = authenticate_customer(request)
    url = parse(WebhookSet, json_body(request)).url
    secret = set_webhook(customer, url, current_app.config["SETTINGS"])
    return {"url": url, "secret": secret}


@budgets.get("/v1/billing/alerts")
def own_alerts() -> dict[str, Any]:
    return alerts_answer(authenticate_customer(request))


def alerts_answer(customer: BillingCustomer) -> dict[str, Any]:
    """The customer's alerts and every delivery attempt (its own, as the API answers)."""
    return {"alerts": [_alert(a) for a in alerts_of(customer.id)]}
