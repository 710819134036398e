"""What an operator can do from ``/admin``, each action recorded with who, when, to what
and how it went (``AdminAction``), behind the admin session and its CSRF token.

The API never records events or talks to Stripe on a page's request: replaying the
parked events, linking a customer to Stripe and reporting a day are queued for the
workers (the tasks ``flask billing`` and Beat use), and the record says which task;
their effect shows on the page as the workers do it. Marking a report resolved is
a row the API writes itself, as the CLI does.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import date
from typing import Any

from sqlalchemy import select

from app.billing.report import resolve_manual
from app.columns import utcnow
from app.customers.models import BillingCustomer
from app.customers.services import LINK_TASK
from app.dashboard.models import AdminAction
from app.errors import NotFound, ServiceError, ValidationError
from app.extensions import db
from app.ingest.recording import REPLAY_TASK
from app.jobs.timetable import REPORT_TASK
from app.registry import services

RECENT_ACTIONS = 20
REPLAY_LIMIT = 1000  # parked events one replay takes

Form = Mapping[str, str]
Performed = tuple[str | None, str]  # (what it was done to, what came of it)


def _queued(task: str, args: list[Any]) -> str:
    sent = services().celery.send_task(task, args=args)
    return f"queued for the workers ({task}, task {sent.id})"


def _replay_parked(form: Form) -> Performed:
    return None, _queued(REPLAY_TASK, [REPLAY_LIMIT])


def _resolve_report(form: Form) -> Performed:
    identifier = form.get("identifier", "").strip()
    note = " ".join(form.get("note", "").split())
    if not note:
        raise ValidationError("say how it was settled (an invoice item, say)", field="note")
    report = resolve_manual(identifier, note[:300])
    return report.identifier, f"resolved by hand: {note[:300]}"


def _link_customer(form: Form) -> Performed:
    raw = form.get("customer_id", "")
    customer = db.session.get(BillingCustomer, int(raw)) if raw.isdigit() else None
    if customer is None:
        raise NotFound("no such customer", field="customer_id")
    if customer.stripe_customer_id:
        return f"customer {customer.id}", f"already linked ({customer.stripe_customer_id})"
    return f"customer {customer.id}", _queued(LINK_TASK, [customer.id])


def _trigger_report(form: Form) -> Performed:
    try:
        day = date.fromisoformat(form.get("day", ""))
    except ValueError:
        raise ValidationError("a day, YYYY-MM-DD", field="day") from None
    if day >= utcnow().date():
        raise ValidationError("only a day that is over can be reported", field="day")
    return day.isoformat(), _queued(REPORT_TASK, [day.isoformat()])


ACTIONS: dict[str, Callable[[Form], Performed]] = {
    "replay-parked": _replay_parked,
    "resolve-report": _resolve_report,
    "link-customer": _link_customer,
    "trigger-report": _trigger_report,
}


def perform(name: str, operator: str, form: Form) -> AdminAction:
    """Do one action and record it, done or refused (with why); the record is kept
    either way. An unknown action is a 404."""
    act = ACTIONS.get(name)
    if act is None:
        raise NotFound(f"no action named {name}", field="action")
    try:
        target, outcome = act(form)
        succeeded = True
    except ServiceError as exc:
        db.session.rollback()
        target, outcome, succeeded = None, f"refused: {exc.message}", False
    except Exception as exc:  # noqa: BLE001 - the broker down, say: recorded, never a 500
        db.session.rollback()
        target, outcome, succeeded = None, f"failed: {type(exc).__name__}: {exc}", False
    action = AdminAction(
        at=utcnow(),
        operator=operator,
        action=name,
        target=target,
        outcome=outcome[:500],
        succeeded=succeeded,
    )
    db.session.add(action)
    db.session.commit()
    return action


def recent_actions() -> list[dict[str, Any]]:
    """The latest actions taken, newest first."""
    rows = db.session.scalars(
        select(AdminAction).order_by(AdminAction.id.desc()).limit(RECENT_ACTIONS)
    )
    return [
        {
            "at": a.at.isoformat(),
            "operator": a.operator,
            "action": a.action,
            "target": a.target,
            "outcome": a.outcome,
            "succeeded": a.succeeded,
        }
        for a in rows
    ]


def unlinked_customers() -> list[dict[str, Any]]:
    """Active customers Stripe does not know yet (their usage cannot be billed)."""
    rows = db.session.scalars(
        select(BillingCustomer)
        .where(BillingCustomer.is_active.is_(True), BillingCustomer.stripe_customer_id.is_(None))
        .order_by(BillingCustomer.id)
        .limit(20)
    )
    return [{"customer_id": c.id, "name": c.name, "email": c.email} for c in rows]
