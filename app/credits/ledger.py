"""Grants, and burning them: what a customer owes under its plans, paid from its credits.

A burn runs in the worker after a batch is recorded. What the customer owes now
(``owed_through``: its plans' charge for everything stored, the same figure the
daily report bills) less what it owed at the last burn is the amount to pay: each
event is therefore paid once, however often its batch is delivered, and a late
event is paid when it is stored. The amount is taken from the live grants in a
stated order (lowest priority number first, then the soonest to expire, then the
oldest, as Stripe's credit grants and Flexprice do); what none covers is overage.
An expiry takes effect at its instant: a grant past its expiry pays for nothing,
and what was left of it leaves the balance in an entry dated then.

Two workers never pay the same amount twice: the account's ``charged`` moves by
compare-and-set (and the row is locked on PostgreSQL), and a burn that lost the
race is computed again.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from sqlalchemy import ColumnElement, func, select, update

from app.credits.models import CreditAccount, CreditEntry, CreditGrant, EntryKind, Overage
from app.customers.models import ApiKey, BillingCustomer
from app.database import execute_dml
from app.errors import Conflict, NotFound, ValidationError
from app.extensions import db
from app.plans.owed import owed_through

log = logging.getLogger("usage_billing.credits")
ZERO = Decimal(0)
# The balance: every entry but overage (which no grant covered).
_IN_BALANCE = CreditEntry.kind != EntryKind.OVERAGE


def account_of(customer_id: int) -> CreditAccount | None:
    return db.session.get(CreditAccount, customer_id)


def grant_of(grant_id: int) -> CreditGrant:
    grant = db.session.get(CreditGrant, grant_id)
    if grant is None:
        raise NotFound(f"no grant {grant_id}", field="grant_id")
    return grant


def grants_of(customer_id: int) -> list[CreditGrant]:
    return list(
        db.session.scalars(
            select(CreditGrant)
            .where(CreditGrant.customer_id == customer_id)
            .order_by(CreditGrant.id)
        )
    )


def open_account(
    customer_id: int, now: datetime, max_event_age_days: int, overage: Overage = Overage.BILL
) -> CreditAccount:
    """The customer's account, made prepaid now if it was not (the caller commits)."""
    if db.session.get(BillingCustomer, customer_id) is None:
        raise NotFound(f"no customer {customer_id}", field="customer_id")
    account = account_of(customer_id)
    if account is None:
        # What it owed before it was prepaid is billed as before, never from credits.
        before = owed_now(customer_id, now, max_event_age_days)
        account = CreditAccount(
            customer_id=customer_id, overage=overage, charged=before, billed_before=before
        )
        db.session.add(account)
        db.session.flush()
    return account


def _entry(
    customer_id: int,
    kind: EntryKind,
    amount: Decimal,
    at: datetime,
    grant_id: int | None = None,
    note: str | None = None,
) -> CreditEntry:
    entry = CreditEntry(
        customer_id=customer_id, grant_id=grant_id, kind=kind, amount=amount, at=at, note=note
    )
    db.session.add(entry)
    return entry


def add_grant(
    customer_id: int,
    amount: Decimal,
    category: str,
    source: str,
    now: datetime,
    max_event_age_days: int,
    priority: int = 50,
    effective_at: datetime | None = None,
    expires_at: datetime | None = None,
    note: str | None = None,
) -> tuple[CreditGrant, bool]:
    """Grant credit once per ``source``: (the grant, whether it is new). A second grant
    of the same source (a webhook delivered again) is the first one, unchanged."""
    existing = db.session.scalar(select(CreditGrant).where(CreditGrant.source == source))
    if existing is not None:
        return existing, False
    if amount <= 0:
        raise ValidationError("amount must be above zero", field="amount")
    start = effective_at or now
    if expires_at is not None and expires_at <= start:
        raise ValidationError("expires_at must be after the grant starts", field="expires_at")
    open_account(customer_id, now, max_event_age_days)
    grant = CreditGrant(
        customer_id=customer_id,
        amount=amount,
        category=category,
        priority=priority,
        effective_at=start,
        expires_at=expires_at,
        source=source,
        note=note,
    )
    db.session.add(grant)
    db.session.flush()
    _entry(customer_id, EntryKind.GRANT, amount, start, grant.id, note)
    db.session.flush()
    _rearm(customer_id)
    return grant, True


def _rearm(customer_id: int) -> None:
    """After a top-up: a balance back at its low-balance threshold is told again when
    it next falls below (``app.credits.notices``)."""
    account = account_of(customer_id)
    if (
        account is not None
        and account.low_balance_alerted
        and account.low_balance_at is not None
        and balance(customer_id) >= account.low_balance_at
    ):
        account.low_balance_alerted = False


def _total(*where: ColumnElement[bool]) -> Decimal:
    """The sum of the ledger's entries that match, in SQL."""
    total = db.session.scalar(select(func.coalesce(func.sum(CreditEntry.amount), 0)).where(*where))
    return Decimal(total or 0)


def remaining(grant: CreditGrant) -> Decimal:
    """What is left of one grant: the sum of the entries naming it."""
    return _total(CreditEntry.grant_id == grant.id)


def _close(grant: CreditGrant, kind: EntryKind, at: datetime, note: str | None) -> Decimal:
    left = remaining(grant)
    if left > 0:
        _entry(grant.customer_id, kind, -left, at, grant.id, note)
    grant.closed_at = at
    return left


def void_grant(grant: CreditGrant, now: datetime, note: str | None = None) -> Decimal:
    """Withdraw what is left of a grant; what was spent stays spent. The amount withdrawn."""
    if grant.closed_at is not None:
        raise Conflict("the grant is closed already (expired or voided)", field="grant_id")
    return _close(grant, EntryKind.VOID, now, note)


def refund_grant(
    grant: CreditGrant, amount: Decimal, now: datetime, note: str | None = None
) -> CreditEntry:
    """Give back part of a purchased grant's unspent amount (the money goes back by
    Stripe, outside the ledger)."""
    if grant.category != "purchased":
        raise ValidationError("only purchased credit is refunded", field="grant_id")
    if grant.closed_at is not None:
        raise Conflict("the grant is closed (expired or voided)", field="grant_id")
    if not 0 < amount <= remaining(grant):
        raise ValidationError("amount must be above zero and at most what is left", field="amount")
    return _entry(grant.customer_id, EntryKind.REFUND, -amount, now, grant.id, note)


def adjust(customer_id: int, amount: Decimal, now: datetime, note: str) -> CreditEntry:
    """An admin's correction of the balance, either way, with its reason."""
    if amount == 0:
        raise ValidationError("amount must not be zero", field="amount")
    if account_of(customer_id) is None:
        raise NotFound(f"customer {customer_id} has no credits", field="customer_id")
    return _entry(customer_id, EntryKind.ADJUSTMENT, amount, now, None, note)


def expire_due(customer_id: int, now: datetime) -> Decimal:
    """Close every grant of the customer whose expiry has passed; what left the balance."""
    due = db.session.scalars(
        select(CreditGrant).where(
            CreditGrant.customer_id == customer_id,
            CreditGrant.closed_at.is_(None),
            CreditGrant.expires_at.is_not(None),
            CreditGrant.expires_at <= now,
        )
    ).all()
    return sum((_close(g, EntryKind.EXPIRY, g.expires_at or now, "expired") for g in due), ZERO)


def balance(customer_id: int) -> Decimal:
    """The customer's balance: the sum of its ledger, overage aside."""
    return _total(CreditEntry.customer_id == customer_id, _IN_BALANCE)


def uncovered(customer_id: int) -> Decimal:
    """What no grant of the customer covered, in all (billed through Stripe)."""
    return _total(CreditEntry.customer_id == customer_id, CreditEntry.kind == EntryKind.OVERAGE)


def burnt_and_available(customer_id: int) -> tuple[Decimal, Decimal]:
    """(what its grants have paid, in all; what they may pay in all: the balance and the
    burnt together), for admission: it refuses once the first reaches the second."""
    rows = db.session.execute(
        select(CreditEntry.kind, func.sum(CreditEntry.amount))
        .where(CreditEntry.customer_id == customer_id, _IN_BALANCE)
        .group_by(CreditEntry.kind)
    ).all()
    sums = {kind: Decimal(total) for kind, total in rows}
    burnt = -sums.get(EntryKind.BURN, ZERO)
    return burnt, sum(sums.values(), ZERO) + burnt


def billable_through(customer_ids: list[int], until: datetime) -> dict[int, Decimal]:
    """What prepaid customers owe Stripe, in USD, for what was burnt before ``until``:
    what they owed before they were prepaid, and what no grant covered since (the
    daily report's figure for them: it only grows, like every customer's)."""
    billed = {
        a.customer_id: a.billed_before
        for a in db.session.scalars(
            select(CreditAccount).where(CreditAccount.customer_id.in_(customer_ids))
        )
    }
    rows = db.session.execute(
        select(CreditEntry.customer_id, func.sum(CreditEntry.amount))
        .where(
            CreditEntry.customer_id.in_(customer_ids),
            CreditEntry.kind == EntryKind.OVERAGE,
            CreditEntry.at < until,
        )
        .group_by(CreditEntry.customer_id)
    ).all()
    for customer_id, total in rows:
        billed[customer_id] = billed.get(customer_id, ZERO) + Decimal(total)
    return billed


def owed_now(customer_id: int, now: datetime, max_event_age_days: int) -> Decimal:
    """What the customer owes under its plans for everything stored up to now."""
    customer = db.session.get(BillingCustomer, customer_id)
    assert customer is not None
    return owed_through([customer], now.date(), max_event_age_days).get(customer_id, ZERO)


def _live_grants(customer_id: int, now: datetime) -> list[CreditGrant]:
    """The grants that may pay now, in the order they pay."""
    grants = db.session.scalars(
        select(CreditGrant).where(
            CreditGrant.customer_id == customer_id,
            CreditGrant.closed_at.is_(None),
            CreditGrant.effective_at <= now,
        )
    ).all()
    never = datetime.max.replace(tzinfo=now.tzinfo)
    return sorted(
        (g for g in grants if g.expires_at is None or g.expires_at > now),
        key=lambda g: (g.priority, g.expires_at or never, g.created_at, g.id),
    )


@dataclass(frozen=True)
class Burnt:
    """What one burn took from the grants, and what none of them covered."""

    paid: Decimal = ZERO
    overage: Decimal = ZERO


def burn(customer_id: int, now: datetime, max_event_age_days: int) -> Burnt:
    """Pay what the customer came to owe since the last burn (the caller commits).

    Raises ``Conflict`` when another worker burnt the customer meanwhile: the
    caller rolls back and burns again, on what is owed then.
    """
    account = db.session.scalar(
        select(CreditAccount).where(CreditAccount.customer_id == customer_id).with_for_update()
    )
    if account is None:
        return Burnt()
    expire_due(customer_id, now)
    owed = owed_now(customer_id, now, max_event_age_days)
    due = owed - account.charged
    if due < 0:  # a price or plan corrected down: credit an operator gives by hand
        log.warning(
            "customer %s owes %s less than was burnt; nothing is given back",
            customer_id,
            -due,
        )
        due = ZERO
    moved = execute_dml(
        update(CreditAccount)
        .where(CreditAccount.customer_id == customer_id, CreditAccount.charged == account.charged)
        .values(charged=max(owed, account.charged))
    ).rowcount
    if moved != 1:
        raise Conflict("credits burnt meanwhile by another worker", field="customer_id")
    paid = ZERO
    left = due
    for grant in _live_grants(customer_id, now):
        if left <= 0:
            break
        take = min(left, remaining(grant))
        if take > 0:
            _entry(customer_id, EntryKind.BURN, -take, now, grant.id)
            paid += take
            left -= take
    if left > 0:
        _entry(customer_id, EntryKind.OVERAGE, left, now)
    return Burnt(paid, left)


def prepaid(customer_ids: list[int]) -> dict[int, CreditAccount]:
    """The accounts of those of these customers that are prepaid."""
    if not customer_ids:
        return {}
    accounts = db.session.scalars(
        select(CreditAccount).where(CreditAccount.customer_id.in_(customer_ids))
    )
    return {a.customer_id: a for a in accounts}


def blocking_exists() -> bool:
    return (
        db.session.scalar(
            select(CreditAccount.customer_id).where(CreditAccount.overage == Overage.BLOCK).limit(1)
        )
        is not None
    )


def blocking() -> list[CreditAccount]:
    """Every account whose calls stop at a zero balance (admission holds their rule)."""
    return list(
        db.session.scalars(select(CreditAccount).where(CreditAccount.overage == Overage.BLOCK))
    )


def customers_of(key_hashes: list[str]) -> list[int]:
    """The prepaid customers holding these keys (none, at one probe, without credits)."""
    if not key_hashes or db.session.scalar(select(CreditAccount.customer_id).limit(1)) is None:
        return []
    return list(
        db.session.scalars(
            select(ApiKey.customer_id)
            .join(CreditAccount, CreditAccount.customer_id == ApiKey.customer_id)
            .where(ApiKey.key_hash.in_(sorted(set(key_hashes))))
            .distinct()
        )
    )


def burn_committed(customer_id: int, now: datetime, max_event_age_days: int) -> Burnt:
    """``burn`` in a transaction of its own, computed again should another worker burn
    the same customer meanwhile."""
    for _ in range(5):
        try:
            burnt = burn(customer_id, now, max_event_age_days)
            db.session.commit()
            return burnt
        except Conflict:
            db.session.rollback()
    raise Conflict(f"credits of customer {customer_id} kept changing", field="customer_id")


SETTLE_TASK = "credits.settle"  # every minute: expiries at their instant, burns missed


def settle_accounts(now: datetime, max_event_age_days: int) -> list[int]:
    """Expire what is due and burn what is owed, for every prepaid customer (a burn a
    worker missed, Redis or the database away, is made good here): the customers
    whose balance changed, for admission to be told."""
    changed = []
    for customer_id in db.session.scalars(select(CreditAccount.customer_id)).all():
        expired = expire_due(customer_id, now)
        db.session.commit()
        burnt = burn_committed(customer_id, now, max_event_age_days)
        if expired or burnt.paid or burnt.overage:
            changed.append(customer_id)
    return changed
