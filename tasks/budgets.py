"""Budgets and alerts: the counters rebuilt or refreshed each minute, alerts delivered."""

from __future__ import annotations

from celery import shared_task

from app.budgets.alerts import DELIVER_TASK, deliver_due
from app.budgets.counters import REBUILDING
from app.budgets.spend import REBUILD_TASK, Estimates, rebuild
from app.celery_app import FlaskTask
from app.columns import utcnow


@shared_task(bind=True, name=REBUILD_TASK)
def rebuild_budgets(self: FlaskTask) -> int:
    """Publish every key and budget to Redis with the spend PostgreSQL holds.

    Queued by the API when Redis lost its state, and run by Beat every minute, so
    a settle that failed, a change not published, or Redis emptied by a restart
    is made good within a minute. Returns how many budgets it refreshed."""
    counters = self.services.budget_counters
    if counters is None:
        return 0
    try:
        return rebuild(counters, utcnow(), Estimates.from_settings(self.settings))
    finally:
        counters.redis.delete(REBUILDING)


@shared_task(bind=True, name=DELIVER_TASK)
def deliver_alerts(self: FlaskTask) -> int:
    """Attempt every alert that is due; run each minute by Beat and after a new alert."""
    return deliver_due(self.settings)
