"""Nightly price refresh and weekly retention cleanup."""

from __future__ import annotations

from celery import shared_task
from flask import current_app

from app.errors import JobAlreadyRunning
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
