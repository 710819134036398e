"""Recording batches of usage events."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from celery import shared_task

from app.budgets.alerts import DELIVER_TASK, queue_notices
from app.budgets.spend import Estimates, settle_batch
from app.celery_app import FlaskTask
from app.columns import utcnow
from app.credits.ledger import burn_committed, customers_of
from app.credits.models import CreditAccount
from app.credits.notices import due_notices
from app.credits.purchases import RECHARGE_TASK, recharge_due
from app.customers.services import count_unattributed
from app.extensions import db
from app.ingest.batch_store import BatchStore
from app.ingest.ledger import recorded_batches
from app.ingest.meter import RECORD_TASK
from app.ingest.recording import REPLAY_TASK, record_events, replay_rejected
from app.ingest.validation import EventLimits
from app.ratelimits.limits import tokens_used

log = logging.getLogger("usage_billing.ingest")


@shared_task(
    bind=True,
    name=RECORD_TASK,
    # Whatever escapes recording is not the events' fault (those are parked one by
    # one inside it): a lost connection, a batch found incomplete, or a bug. The
    # batch waits and is tried again; it is never dropped or parked for it.
    autoretry_for=(Exception,),
    retry_backoff=True,
    retry_backoff_max=60,
    retry_jitter=True,
    max_retries=None,
)
def record_events_task(
    self: FlaskTask,
    events: list[dict[str, Any]] | None,
    batch_id: str | None = None,
    accepted_at: float | None = None,
) -> dict[str, int]:
    """Store a batch; any failure retries the whole batch.

    ``events`` is None when they wait in the batch store under ``batch_id``
    (app/ingest/batch_store.py). Retrying the whole batch is safe: a recorded batch has
    a receipt (``batch_id``) and rows already stored are skipped by event id.
    """
    store = self.services.batches
    if events is None:
        events = store.take(batch_id) if store is not None and batch_id else None
        if events is None:
            return _events_gone(batch_id)
    try:
        result = record_events(
            events,
            EventLimits.from_settings(self.settings),
            batch_id=batch_id,
            accepted_at=_instant(accepted_at),
        )
    except Exception:
        db.session.rollback()
        log.exception("batch %s not recorded; it will be tried again", batch_id)
        raise
    _recorded(store, batch_id)
    _attribute(events)
    _burn_credits(self, events)
    _settle_budgets(self, events)
    return {
        "inserted": result.inserted,
        "duplicates": result.duplicates,
        "rejected": len(result.rejected),
    }


def _instant(accepted_at: Any) -> datetime | None:
    """When the API accepted the batch (unix time in the message), if it says."""
    if isinstance(accepted_at, int | float) and not isinstance(accepted_at, bool):
        return datetime.fromtimestamp(accepted_at, UTC)
    return None


def _attribute(events: list[dict[str, Any]]) -> None:
    """Count the batch's events no customer can be billed for; never fails the batch."""
    try:
        count_unattributed(events)
    except Exception:  # noqa: BLE001 - the batch stands; only a count is missed
        db.session.rollback()
        log.exception("unattributed events of a recorded batch not counted")


def _burn_credits(task: FlaskTask, events: list[dict[str, Any]]) -> None:
    """Pay the batch's prepaid customers' usage from their credits, and queue the
    recharge and the notices a burn made due; never fails the batch, which is recorded: the minute's
    ``credits.settle`` job burns what a failure here left."""
    hashes = [e["api_key_hash"] for e in events if isinstance(e, dict) and "api_key_hash" in e]
    try:
        now = utcnow()
        for customer_id in customers_of([h for h in hashes if isinstance(h, str)]):
            burn_committed(customer_id, now, task.settings.max_event_age_days)
            account = db.session.get(CreditAccount, customer_id)
            due = recharge_due(account, now) if account is not None else None
            notices = due_notices(customer_id, now, task.settings.credit_expiry_warning_days)
            told = queue_notices(notices, now)
            db.session.commit()
            if due is not None:
                task.services.celery.send_task(RECHARGE_TASK, args=[due.id])
            if told:
                task.services.celery.send_task(DELIVER_TASK)
    except Exception:  # noqa: BLE001 - the batch stands; the minute's job burns later
        db.session.rollback()
        log.exception("credits not burnt for a recorded batch; the minute's job catches up")


def _settle_budgets(task: FlaskTask, events: list[dict[str, Any]]) -> None:
    """Bring the budgets of the batch's keys up to date; never fails the batch, which
    is recorded: a later settle or the minute's rebuild job catches up."""
    counters = task.services.budget_counters
    if counters is None:
        return
    try:
        defaults = Estimates.from_settings(task.settings)
        now = datetime.now(UTC)
        counters.settle_tokens(tokens_used(events, now, EventLimits.from_settings(task.settings)))
        if settle_batch(counters, events, now, defaults):
            task.services.celery.send_task(DELIVER_TASK)  # deliver them now
    except Exception:  # noqa: BLE001 - the batch stands; the budgets catch up later
        db.session.rollback()
        log.exception("budgets not settled for a recorded batch; the next settle catches up")


def _events_gone(batch_id: str | None) -> dict[str, int]:
    """A message whose events are no longer in the batch store."""
    if batch_id is not None and recorded_batches([batch_id]):
        # Recorded, and its events deleted, by a worker that died before it
        # acknowledged the message: this is the message coming back.
        return {"inserted": 0, "duplicates": 0, "rejected": 0, "already_recorded": 1}
    # No receipt is written, so the outbox sends the batch again.
    log.warning("batch %s: its events are gone from the batch store", batch_id)
    return {"inserted": 0, "duplicates": 0, "rejected": 0, "missing": 1}


def _recorded(store: BatchStore | None, batch_id: str | None) -> None:
    """The batch has its receipt: its events can leave the batch store."""
    if store is not None and batch_id is not None:
        store.drop(batch_id)


@shared_task(bind=True, name=REPLAY_TASK)
def replay_parked(self: FlaskTask, limit: int = 1000) -> dict[str, int]:
    """Record up to ``limit`` parked events again (an operator's action on /admin, as
    ``flask billing replay-rejected``): the valid now stored, the others parked again."""
    result = replay_rejected(limit, EventLimits.from_settings(self.settings))
    return {
        "stored": result.inserted,
        "already_stored": result.duplicates,
        "parked_again": len(result.rejected),
    }
