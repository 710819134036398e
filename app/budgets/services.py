"""Setting budgets (admins), a customer's own lower limit and its alert webhook, and reading
them back with what each has spent this period.

The changes are the caller's to commit, so several can share one transaction.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import cast

from sqlalchemy import select

from app.budgets.alerts import check_url, new_secret
from app.budgets.models import Budget, BudgetAlert
from app.columns import amount_str
from app.config import Settings
from app.customers.models import ApiKey, BillingCustomer
from app.errors import NotFound, ValidationError
from app.extensions import db
from app.periods import Period, PeriodKind, period_at


@dataclass(frozen=True)
class BudgetSpec:
    """A budget as an admin sets it."""

    metric: str
    period: str
    limit: Decimal
    thresholds: tuple[int, ...]
    hard_limit: bool
    api_key_id: int | None = None


def _customer(customer_id: int) -> BillingCustomer:
    customer = db.session.get(BillingCustomer, customer_id)
    if customer is None:
        raise NotFound(f"no customer {customer_id}", field="customer_id")
    return customer


def budget_of(budget_id: int, customer_id: int | None = None) -> Budget:
    """The budget; of this customer only, when one is named (a customer's own request)."""
    budget = db.session.get(Budget, budget_id)
    if budget is None or (customer_id is not None and budget.customer_id != customer_id):
        raise NotFound(f"no budget {budget_id}", field="budget_id")
    return budget


def create_budget(customer_id: int, spec: BudgetSpec) -> Budget:
    customer = _customer(customer_id)
    if spec.api_key_id is not None:
        key = db.session.get(ApiKey, spec.api_key_id)
        if key is None or key.customer_id != customer.id:
            raise ValidationError("api_key_id is not a key of this customer", field="api_key_id")
    budget = Budget(
        customer_id=customer.id,
        api_key_id=spec.api_key_id,
        metric=spec.metric,
        period=spec.period,
        limit_value=spec.limit,
        thresholds=sorted(set(spec.thresholds)),
        hard_limit=spec.hard_limit,
    )
    db.session.add(budget)
    db.session.flush()
    return budget


def update_budget(
    budget: Budget,
    limit: Decimal | None = None,
    thresholds: tuple[int, ...] | None = None,
    hard: bool | None = None,
) -> Budget:
    """Change what is given, and only that: a new limit leaves the budget hard (or
    soft) and its thresholds as they were. A customer's own limit above the new one
    stops counting (the lower of the two applies)."""
    if limit is not None:
        budget.limit_value = limit
    if thresholds is not None:
        budget.thresholds = sorted(set(thresholds))
    if hard is not None:
        budget.hard_limit = hard
    return budget


def set_customer_limit(budget: Budget, limit: Decimal | None) -> Budget:
    """The customer's own limit: at most the admin's; None removes it."""
    if limit is not None and limit > budget.limit_value:
        raise ValidationError(
            f"limit must not exceed the budget's limit ({amount_str(budget.limit_value)})",
            field="limit",
        )
    budget.customer_limit = limit
    return budget


def delete_budget(budget: Budget) -> None:
    db.session.delete(budget)


def budgets_of(customer_id: int) -> list[Budget]:
    _customer(customer_id)
    return list(
        db.session.scalars(
            select(Budget).where(Budget.customer_id == customer_id).order_by(Budget.id)
        )
    )


def budget_period(budget: Budget, now: datetime) -> Period:
    """The budget's period holding ``now`` (a billing period is its customer's)."""
    customer = db.session.get(BillingCustomer, budget.customer_id)
    assert customer is not None  # a budget's customer is its foreign key
    return period_at(cast(PeriodKind, budget.period), now, customer.created_at.day)


def set_webhook(customer: BillingCustomer, url: str | None, settings: Settings) -> str | None:
    """Set (or, with None, remove) where alerts go; a new signing secret each time,
    returned once. The URL is checked now, and again at every delivery."""
    if url is None:
        customer.alert_webhook_url = customer.alert_webhook_secret = None
        return None
    check_url(url, settings, resolve=False)
    customer.alert_webhook_url = url
    customer.alert_webhook_secret = new_secret()
    return customer.alert_webhook_secret


def alerts_of(customer_id: int, limit: int = 100) -> list[BudgetAlert]:
    return list(
        db.session.scalars(
            select(BudgetAlert)
            .where(BudgetAlert.customer_id == customer_id)
            .order_by(BudgetAlert.id.desc())
            .limit(limit)
        )
    )
