"""Plans over HTTP: admins create versions and assign them; a customer previews what it
owes this period (admins see our cost and the margin beside it)."""

from __future__ import annotations

from datetime import date
from typing import Annotated, Any

from flask import Blueprint, current_app, request
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, StringConstraints

from app.customers.models import BillingCustomer
from app.customers.services import authenticate_customer
from app.errors import NotFound
from app.extensions import db
from app.models.types import amount_str, utcnow
from app.plans.models import PricePlan
from app.plans.services import (
    Invoice,
    all_plans,
    assign_plan,
    check_effective,
    create_version,
    plan_version,
    upcoming_invoice,
)
from app.plans.terms import PlanTerms
from app.security import require_token
from app.shapes import MAX_ID, CalendarDate, json_body, parse, path_id, text

plans = Blueprint("plans", __name__)
Code = Annotated[StrictStr, StringConstraints(pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$")]


class PlanCreate(BaseModel):
    """A new version of a plan (its first when the code is new)."""

    model_config = ConfigDict(extra="forbid")

    code: Code
    name: text(200)
    terms: PlanTerms


class PlanAssign(BaseModel):
    """A customer on a plan (its latest version unless one is named) from a day's start."""

    model_config = ConfigDict(extra="forbid")

    code: Code
    version: Annotated[StrictInt, Field(ge=1, le=MAX_ID)] | None = None
    effective_from: CalendarDate


def _admin() -> None:
    require_token(request, current_app.config["SETTINGS"].admin_token, "admin")


def _plan(plan: PricePlan) -> dict[str, Any]:
    return {
        "code": plan.code,
        "version": plan.version,
        "name": plan.name,
        "terms": plan.terms,
        "created_at": plan.created_at.isoformat(),
    }


def _invoice(invoice: Invoice, with_cost: bool) -> dict[str, Any]:
    body: dict[str, Any] = {
        "currency": "usd",
        "period_start": invoice.period.start.isoformat(),
        "period_end": invoice.period.ends_at.isoformat(),
        "through": invoice.through.isoformat(),
        "plans": [{"code": plan.code, "version": plan.version} for plan, _ in invoice.parts],
        "lines": [
            {
                "plan": plan.code,
                "kind": line.kind,
                "provider": line.provider,
                "model": line.model,
                "tier": line.tier,
                "units": amount_str(line.units),
                "unit_price": amount_str(line.unit_price),
                "amount": amount_str(line.amount),
            }
            for plan, charge in invoice.parts
            for line in charge.lines
        ],
        "included_used": amount_str(invoice.included_used),
        "total": amount_str(invoice.total),
    }
    if with_cost:
        body["cost"] = amount_str(invoice.cost)
        body["margin"] = amount_str(invoice.total - invoice.cost)
    return body


@plans.post("/v1/billing/plans")
def create() -> tuple[dict[str, Any], int]:
    _admin()
    body = parse(PlanCreate, json_body(request))
    return _plan(create_version(body.code, body.name, body.terms)), 201


@plans.get("/v1/billing/plans")
def listing() -> dict[str, Any]:
    _admin()
    return {"plans": [_plan(plan) for plan in all_plans()]}


@plans.post("/v1/billing/customers/<customer_id>/plan")
def assign(customer_id: str) -> tuple[dict[str, Any], int]:
    _admin()
    body = parse(PlanAssign, json_body(request))
    plan = plan_version(body.code, body.version)
    day: date = check_effective(body.effective_from, utcnow().date())
    assignment = assign_plan(path_id(customer_id, "customer_id"), plan, day)
    return {
        "customer_id": assignment.customer_id,
        "plan": {"code": plan.code, "version": plan.version},
        "effective_from": assignment.effective_from.isoformat(),
    }, 201


@plans.get("/v1/billing/customers/<customer_id>/invoice/upcoming")
def upcoming_for_admin(customer_id: str) -> dict[str, Any]:
    _admin()
    customer = db.session.get(BillingCustomer, path_id(customer_id, "customer_id"))
    if customer is None:
        raise NotFound(f"no customer {customer_id}", field="customer_id")
    return _invoice(upcoming_invoice(customer, utcnow()), with_cost=True)


@plans.get("/v1/billing/invoice/upcoming")
def upcoming() -> dict[str, Any]:
    customer = authenticate_customer(request)
    return _invoice(upcoming_invoice(customer, utcnow()), with_cost=False)
