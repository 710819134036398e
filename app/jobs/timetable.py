"""The Beat schedule: the daily and weekly jobs, all in UTC, times from settings, the
budgets' minute jobs, and the operators' overview every five minutes."""

from __future__ import annotations

from typing import Any

from celery.schedules import crontab

from app.budgets.alerts import DELIVER_TASK
from app.budgets.spend import REBUILD_TASK
from app.config import Settings
from app.credits.ledger import SETTLE_TASK as CREDITS_SETTLE_TASK

REPORT_TASK = "billing.report_usage"
REFRESH_TASK = "jobs.refresh_prices"
CLEANUP_TASK = "jobs.cleanup_usage"
PARTITIONS_TASK = "jobs.make_partitions"
RECONCILE_TASK = "billing.reconcile"
OVERVIEW_TASK = "overview.refresh"
OVERVIEW_EVERY_SECONDS = 300.0  # the operators' snapshot of the month's top customers


def beat_schedule(settings: Settings) -> dict[str, dict[str, Any]]:
    return {
        "daily-usage-report": {
            "task": REPORT_TASK,
            "schedule": crontab(
                minute=str(settings.report_minute_utc), hour=str(settings.report_hour_utc)
            ),
        },
        "nightly-price-refresh": {
            "task": REFRESH_TASK,
            "schedule": crontab(minute="0", hour=str(settings.price_refresh_hour_utc)),
        },
        "weekly-cleanup": {
            "task": CLEANUP_TASK,
            "schedule": crontab(
                minute="0",
                hour=str(settings.cleanup_hour_utc),
                day_of_week=str(settings.cleanup_weekday),
            ),
        },
        "daily-ledger-partitions": {
            "task": PARTITIONS_TASK,
            "schedule": crontab(minute="0", hour=str(settings.partition_hour_utc)),
        },
        "daily-reconciliation": {
            "task": RECONCILE_TASK,
            "schedule": crontab(minute="0", hour=str(settings.reconcile_hour_utc)),
        },
        "budgets-rebuild": {"task": REBUILD_TASK, "schedule": 60.0},
        "alerts-delivery": {"task": DELIVER_TASK, "schedule": 60.0},
        "credits-settle": {"task": CREDITS_SETTLE_TASK, "schedule": 60.0},
        "operators-overview": {"task": OVERVIEW_TASK, "schedule": OVERVIEW_EVERY_SECONDS},
    }
