"""Plans over HTTP: admins create versions and assign them; a customer previews what it
owes this period (admins see our cost and the margin beside it)."""

from __future__ import annotations

from dataclasses import asdict
from datetime import date
from typing import Annotated, Any, Literal

from flask import Blueprint
from pydantic import BaseModel, ConfigDict, StrictStr, StringConstraints

from app.columns import utcnow
from app.contract import ADMIN, Answer, Day, Instant, Quantity, operation
from app.customers.models import BillingCustomer
from app.customers.services import API_KEY
from app.errors import NotFound
from app.extensions import db
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
from app.shapes import CalendarDate, Id, Text

plans = Blueprint("plans", __name__)
Code = Annotated[StrictStr, StringConstraints(pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$")]


class PlanCreate(BaseModel):
    """A new version of a plan (its first when the code is new)."""

    model_config = ConfigDict(extra="forbid")

    code: Code
    name: Annotated[str, Text(200)]
    terms: PlanTerms


class PlanAssign(BaseModel):
    """A customer on a plan (its latest version unless one is named) from a day's start."""

    model_config = ConfigDict(extra="forbid")

    code: Code
    version: Id | None = None
    effective_from: CalendarDate


class PlanAnswer(Answer):
    """A version of a plan."""

    code: str
    version: int
    name: str
    terms: dict[str, Any]
    created_at: Instant

    @classmethod
    def of(cls, plan: PricePlan) -> PlanAnswer:
        return cls(
            code=plan.code,
            version=plan.version,
            name=plan.name,
            terms=plan.terms,
            created_at=plan.created_at,
        )


class PlanList(Answer):
    """Every plan version."""

    plans: list[PlanAnswer]


class PlanVersion(Answer):
    code: str
    version: int


class Assigned(Answer):
    """The customer's plan from that day on."""

    customer_id: int
    plan: PlanVersion
    effective_from: Day


class InvoiceLine(Answer):
    plan: str
    kind: Literal["usage", "included", "flat", "minimum"]
    provider: str
    model: str
    tier: int
    units: Quantity
    unit_price: Quantity
    amount: Quantity


class InvoiceAnswer(Answer):
    """The billing period so far, line by line."""

    currency: Literal["usd"]
    period_start: Day
    period_end: Instant
    through: Day
    plans: list[PlanVersion]
    lines: list[InvoiceLine]
    included_used: Quantity
    total: Quantity

    @classmethod
    def of(cls, invoice: Invoice) -> InvoiceAnswer:
        return cls(**_invoice_fields(invoice))


def _invoice_fields(invoice: Invoice) -> dict[str, Any]:
    return {
        "currency": "usd",
        "period_start": invoice.period.start,
        "period_end": invoice.period.ends_at,
        "through": invoice.through,
        "plans": [PlanVersion(code=plan.code, version=plan.version) for plan, _ in invoice.parts],
        "lines": [
            InvoiceLine(plan=plan.code, **asdict(line))
            for plan, charge in invoice.parts
            for line in charge.lines
        ],
        "included_used": invoice.included_used,
        "total": invoice.total,
    }


class AdminInvoiceAnswer(InvoiceAnswer):
    """The period so far, with what it cost us and the margin."""

    cost: Quantity
    margin: Quantity

    @classmethod
    def of(cls, invoice: Invoice) -> AdminInvoiceAnswer:
        cost = invoice.cost
        return cls(**_invoice_fields(invoice), cost=cost, margin=invoice.total - cost)


@operation(
    plans,
    "POST",
    "/v1/billing/plans",
    summary="A new version of a plan (admin); versions are never edited",
    auth=ADMIN,
    body=PlanCreate,
    answers={201: PlanAnswer},
    errors=(400, 401, 403, 413, 415),
)
def create(body: PlanCreate) -> tuple[PlanAnswer, int]:
    plan = create_version(body.code, body.name, body.terms)
    db.session.commit()
    return PlanAnswer.of(plan), 201


@operation(
    plans,
    "GET",
    "/v1/billing/plans",
    summary="Every plan version (admin)",
    auth=ADMIN,
    answers={200: PlanList},
    errors=(401, 403),
)
def listing() -> PlanList:
    return PlanList(plans=[PlanAnswer.of(plan) for plan in all_plans()])


@operation(
    plans,
    "POST",
    "/v1/billing/customers/<customer_id>/plan",
    summary="Put a customer on a plan from a day's start, UTC (admin)",
    auth=ADMIN,
    body=PlanAssign,
    answers={201: Assigned},
    errors=(400, 401, 403, 404, 413, 415),
    rules="effective_from is at most a year back.",
)
def assign(customer_id: int, body: PlanAssign) -> tuple[Assigned, int]:
    plan = plan_version(body.code, body.version)
    day: date = check_effective(body.effective_from, utcnow().date())
    assignment = assign_plan(customer_id, plan, day)
    db.session.commit()
    assigned = Assigned(
        customer_id=assignment.customer_id,
        plan=PlanVersion(code=plan.code, version=plan.version),
        effective_from=assignment.effective_from,
    )
    return assigned, 201


@operation(
    plans,
    "GET",
    "/v1/billing/customers/<customer_id>/invoice/upcoming",
    summary="A customer's period so far, with our cost and the margin (admin)",
    auth=ADMIN,
    answers={200: AdminInvoiceAnswer},
    errors=(401, 403, 404),
)
def upcoming_for_admin(customer_id: int) -> AdminInvoiceAnswer:
    customer = db.session.get(BillingCustomer, customer_id)
    if customer is None:
        raise NotFound(f"no customer {customer_id}", field="customer_id")
    return AdminInvoiceAnswer.of(upcoming_invoice(customer, utcnow()))


@operation(
    plans,
    "GET",
    "/v1/billing/invoice/upcoming",
    summary="The caller's billing period so far, line by line",
    auth=API_KEY,
    answers={200: InvoiceAnswer},
    errors=(401,),
)
def upcoming(caller: BillingCustomer) -> InvoiceAnswer:
    return InvoiceAnswer.of(upcoming_invoice(caller, utcnow()))
