"""Nightly price refresh, the ledger's partitions ahead, weekly retention cleanup, and
the operators' overview."""

from __future__ import annotations

from typing import Any

from celery import shared_task

from app.celery_app import FlaskTask
from app.columns import utcnow
from app.dashboard.overview import refresh_top_customers
from app.ingest.partitions import make_partitions as make_ledger_partitions
from app.jobs.definitions import run_cleanup, run_price_refresh
from app.jobs.timetable import CLEANUP_TASK, OVERVIEW_TASK, PARTITIONS_TASK, REFRESH_TASK


@shared_task(bind=True, name=REFRESH_TASK)
def price_refresh(self: FlaskTask) -> dict[str, Any] | None:
    """A bad source fails the run (recorded in job_runs) and changes no price."""
    return run_price_refresh(self.settings).counts


@shared_task(bind=True, name=CLEANUP_TASK)
def cleanup_usage(self: FlaskTask) -> dict[str, Any] | None:
    return run_cleanup(self.settings).counts


@shared_task(bind=True, name=PARTITIONS_TASK)
def make_partitions(self: FlaskTask) -> list[str]:
    """The weeks ahead of the ledger (PostgreSQL); idempotent, so a retry or a second
    Beat is harmless. Returns the partitions it made."""
    return make_ledger_partitions(self.settings, utcnow())


@shared_task(bind=True, name=OVERVIEW_TASK)
def refresh_overview(self: FlaskTask) -> int:
    """Keep the month's top customers fresh for the operators' page; returns how many."""
    return len(refresh_top_customers(self.services.redis, utcnow())["customers"])
