"""``flask billing …``: operator commands over the same services as the tasks."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from datetime import date

import click
from flask import current_app
from flask.cli import AppGroup

from app.analytics.cli import export_command
from app.billing.report import resolve_manual
from app.columns import utcnow
from app.config import Settings
from app.credits.cli import credits_cli
from app.customers.cli import customers_cli, keys_cli
from app.errors import JobAlreadyRunning, NotFound, ValidationError
from app.ingest.recording import replay_rejected
from app.ingest.validation import EventLimits
from app.jobs.definitions import (
    CLEANUP_JOB,
    REFRESH_JOB,
    REPORT_JOB,
    job_status,
    run_cleanup,
    run_price_refresh,
    run_reconciliation,
    run_report,
)
from app.jobs.models import JobRun
from app.jobs.runner import JobFailed
from app.jobs.timetable import REPORT_TASK
from app.plans.cli import plans_cli
from app.progress import progress_bar
from app.registry import services

billing_cli = AppGroup("billing", help="Billing operations.")
billing_cli.add_command(customers_cli)
billing_cli.add_command(keys_cli)
billing_cli.add_command(plans_cli)
billing_cli.add_command(credits_cli)
billing_cli.add_command(export_command)


def _settings() -> Settings:
    return current_app.config["SETTINGS"]


def _run(label: str, action: Callable[[], JobRun | list[JobRun]]) -> None:
    try:
        result = action()
    except (JobAlreadyRunning, ValidationError) as exc:
        raise click.ClickException(exc.message) from exc
    except JobFailed as exc:
        click.echo(
            json.dumps({"job": label, "status": "failed", "counts": exc.counts, "error": str(exc)})
        )
        sys.exit(1)
    runs = result if isinstance(result, list) else [result]
    for run in runs:
        click.echo(
            json.dumps(
                {"job": run.job, "period": run.period, "status": run.status, "counts": run.counts}
            )
        )


@billing_cli.command("report")
@click.option("--date", "day", default=None, help="YYYY-MM-DD; default: every day due")
def report(day: str | None) -> None:
    """Report usage to Stripe for a day (default: yesterday and any missed day)."""
    when = date.fromisoformat(day) if day else None
    with progress_bar("reporting customers") as progress:
        _run(REPORT_JOB, lambda: run_report(_settings(), when, progress=progress))


@billing_cli.command("trigger-report")
@click.option("--date", "day", default=None, help="YYYY-MM-DD; default: every day due")
def trigger_report(day: str | None) -> None:
    """Queue the report for the workers, as Beat does at 02:00; does not wait for it."""
    if day is not None:
        date.fromisoformat(day)  # refuse a malformed date here, not in a worker
    sent = services().celery.send_task(REPORT_TASK, args=[day] if day else [])
    click.echo(json.dumps({"queued": REPORT_TASK, "task_id": sent.id, "date": day}))


@billing_cli.command("refresh-prices")
def price_refresh_command() -> None:
    _run(REFRESH_JOB, lambda: run_price_refresh(_settings()))


@billing_cli.command("cleanup")
def cleanup() -> None:
    with progress_bar("cleaning up customers") as progress:
        _run(CLEANUP_JOB, lambda: run_cleanup(_settings(), progress=progress))


@billing_cli.command("resolve-report")
@click.argument("identifier")
@click.option("--note", required=True, help="How it was settled (e.g. an invoice item id).")
def resolve_report(identifier: str, note: str) -> None:
    """Mark a report that needed manual billing as settled by hand."""
    try:
        report = resolve_manual(identifier, note)
    except NotFound as exc:
        raise click.ClickException(exc.message) from exc
    click.echo(json.dumps({"identifier": report.identifier, "status": report.status}))


@billing_cli.command("replay-rejected")
@click.option("--limit", default=1000, show_default=True, help="Parked events to take.")
def replay_rejected_events(limit: int) -> None:
    """Record parked events again (after fixing what parked them)."""
    limits = EventLimits.from_settings(_settings())
    with progress_bar("replaying parked events") as progress:
        result = replay_rejected(limit, limits, progress)
    click.echo(
        json.dumps(
            {
                "stored": result.inserted,
                "already_stored": result.duplicates,
                "parked_again": len(result.rejected),
            }
        )
    )


@billing_cli.command("reconcile")
def reconcile_command() -> None:
    """Compare what the ledger says was sent with Stripe's meter summaries, now."""
    with progress_bar("reconciling customers") as progress:
        _run("reconcile", lambda: run_reconciliation(_settings(), progress=progress))


@billing_cli.command("status")
def status() -> None:
    """Last run of each job as JSON; exit 1 when one failed or is overdue, a report
    waits for manual billing, or Stripe holds other than the ledger says was sent."""
    status = job_status(_settings(), utcnow())
    click.echo(json.dumps(status, indent=2))
    sys.exit(0 if status["healthy"] else 1)
