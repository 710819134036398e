"""Budgets and alerts: the counters rebuilt or refreshed each minute, alerts delivered."""

from __future__ import annotations

from celery import shared_task
from flask import current_app

from app.budgets.admission import counters_for
from app.budgets.alerts import deliver_due
from app.budgets.counters import REBUILDING
from app.budgets.spend import Estimates, rebuild
from app.extensions import db
from app.models.types import utcnow
from app.schedule import ALERTS_TASK, BUDGETS_REBUILD_TASK


@shared_task(name=BUDGETS_REBUILD_TASK, acks_late=True)
def rebuild_budgets() -> int:
    """Publish every key and budget to Redis with the spend PostgreSQL holds.

    Queued by the API when Redis lost its state, and run by Beat every minute, so
    a settle that failed, a change not published, or Redis emptied by a restart
    is made good within a minute. Returns how many budgets it refreshed."""
    counters = counters_for(current_app)
    if counters is None:
        return 0
    try:
        return rebuild(counters, utcnow(), Estimates.from_settings(current_app.config["SETTINGS"]))
    finally:
        db.session.remove()
        counters.redis.delete(REBUILDING)


@shared_task(name=ALERTS_TASK, acks_late=True)
def deliver_alerts() -> int:
    """Attempt every alert that is due; run each minute by Beat and after a new alert."""
    try:
        return deliver_due(current_app.config["SETTINGS"])
    finally:
        db.session.remove()
