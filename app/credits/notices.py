"""What a prepaid customer is told, each once: its balance fell below its
``low_balance_at``, credit with something left expires within
``CREDIT_EXPIRY_WARNING_DAYS``, an auto-recharge's payment failed.

Each notice is decided here, in the credits' own rows, by a flag moved with
compare-and-set (``low_balance_alerted``, ``expiry_warned``): of two workers that
see the same crossing, one wins the update and gives the notice. A top-up that
lifts the balance back to the threshold re-arms the low-balance notice (in
``app.credits.ledger.add_grant``),
so the next crossing is told again. The caller hands the notices to the alerts'
signed webhooks (``app.budgets.alerts.queue_notices``), in the same transaction.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import select, update

from app.columns import amount_str
from app.credits.ledger import balance, remaining
from app.credits.models import CreditAccount, CreditGrant, CreditRecharge
from app.database import execute_dml
from app.extensions import db

LOW_BALANCE = "credits.low_balance"
EXPIRING = "credits.expiring"
RECHARGE_FAILED = "credits.recharge_failed"


@dataclass(frozen=True)
class Notice:
    """One notice for one customer: ``amount`` against ``limit`` (the balance and the
    threshold; what is left of a grant and its amount; a payment's amount)."""

    customer_id: int
    type: str
    amount: Decimal
    limit: Decimal
    details: dict[str, Any] = field(default_factory=dict)

    def payload(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "customer_id": self.customer_id,
            "amount": amount_str(self.amount),
            "limit": amount_str(self.limit),
            **self.details,
        }


def _low_balance(account: CreditAccount) -> list[Notice]:
    threshold = account.low_balance_at
    if threshold is None or account.low_balance_alerted:
        return []
    left = balance(account.customer_id)
    if left >= threshold:
        return []
    won = execute_dml(
        update(CreditAccount)
        .where(
            CreditAccount.customer_id == account.customer_id,
            CreditAccount.low_balance_alerted.is_(False),
        )
        .values(low_balance_alerted=True)
    ).rowcount
    if won != 1:
        return []
    return [Notice(account.customer_id, LOW_BALANCE, left, threshold)]


def _expiring(customer_id: int, now: datetime, warn: timedelta) -> list[Notice]:
    soon = db.session.scalars(
        select(CreditGrant).where(
            CreditGrant.customer_id == customer_id,
            CreditGrant.closed_at.is_(None),
            CreditGrant.expiry_warned.is_(False),
            CreditGrant.expires_at.is_not(None),
            CreditGrant.expires_at > now,
            CreditGrant.expires_at <= now + warn,
        )
    ).all()
    notices = []
    for grant in soon:
        left = remaining(grant)
        if left <= 0:
            continue
        won = execute_dml(
            update(CreditGrant)
            .where(CreditGrant.id == grant.id, CreditGrant.expiry_warned.is_(False))
            .values(expiry_warned=True)
        ).rowcount
        if won == 1:
            assert grant.expires_at is not None
            details = {"grant_id": grant.id, "expires_at": grant.expires_at.isoformat()}
            notices.append(Notice(customer_id, EXPIRING, left, grant.amount, details))
    return notices


def due_notices(customer_id: int, now: datetime, warn_days: int) -> list[Notice]:
    """The notices this customer is owed now, each claimed (the caller commits)."""
    account = db.session.get(CreditAccount, customer_id)
    if account is None:
        return []
    return _low_balance(account) + _expiring(customer_id, now, timedelta(days=warn_days))


def recharge_failed_notice(recharge: CreditRecharge) -> Notice:
    return Notice(
        recharge.customer_id,
        RECHARGE_FAILED,
        recharge.amount,
        recharge.amount,
        {"recharge_id": recharge.id, "error": recharge.error},
    )


def every_due_notice(now: datetime, warn_days: int) -> list[Notice]:
    """``due_notices`` of every prepaid customer (the minute's job: an expiry comes
    near with no usage at all)."""
    customers = db.session.scalars(select(CreditAccount.customer_id)).all()
    return [notice for c in customers for notice in due_notices(c, now, warn_days)]
