"""Nightly price refresh, the ledger's partitions ahead, weekly retention cleanup, and
the operators' overview."""

from __future__ import annotations

from celery import shared_task
from flask import current_app

from app.errors import JobAlreadyRunning
from app.extensions import db, shared_redis
from app.ingest.partitions import make_partitions as make_ledger_partitions
from app.models.types import utcnow
from app.schedule import OVERVIEW_TASK, PARTITIONS_TASK
from app.services.overview import refresh_top_customers
from app.services.scheduled import run_cleanup, run_price_refresh


@shared_task(name="jobs.refresh_prices", acks_late=True)
def refresh_prices() -> dict | None:
    """A bad source fails the run (recorded in job_runs) and changes no price."""
    try:
        return run_price_refresh(current_app.config["SETTINGS"]).counts
    except JobAlreadyRunning:
        return None


@shared_task(name="jobs.cleanup_usage", acks_late=True)
def cleanup_usage() -> dict | None:
    try:
        return run_cleanup(current_app.config["SETTINGS"]).counts
    except JobAlreadyRunning:
        return None


@shared_task(name=PARTITIONS_TASK, acks_late=True)
def make_partitions() -> list[str]:
    """The weeks ahead of the ledger (PostgreSQL); idempotent, so a retry or a second
    Beat is harmless. Returns the partitions it made."""
    try:
        return make_ledger_partitions(current_app.config["SETTINGS"], utcnow())
    finally:
        db.session.remove()


@shared_task(name=OVERVIEW_TASK)
def refresh_overview() -> int:
    """Keep the month's top customers fresh for the operators' page; returns how many."""
    try:
        return len(refresh_top_customers(shared_redis(current_app), utcnow())["customers"])
    finally:
        db.session.remove()
