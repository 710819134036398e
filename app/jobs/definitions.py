"""The scheduled jobs, each run under its (job, period) lock.

Beat's tasks and the ``flask billing`` commands both call these, so a job run
by hand is recorded, locked and idempotent exactly like a scheduled one.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any

from sqlalchemy import select

from app.billing.reconcile import open_differences, reconcile
from app.billing.report import report_day, reports_needing_manual
from app.billing.settled import cleanup_cutoff, customer_cutoffs
from app.columns import utcnow
from app.config import Settings
from app.customers.services import link_unlinked_customers
from app.errors import ValidationError
from app.extensions import db
from app.ingest.ledger import latest_event_at
from app.ingest.retention import (
    RECEIPT_RETENTION,
    cleanup_pace,
    delete_events_before,
    delete_hours_before,
    delete_ids_before,
    delete_receipts_before,
    drop_partitions,
    whole_weeks,
)
from app.jobs.models import Installation, JobRun, JobStatus
from app.jobs.runner import JobFailed, last_completed, last_runs, last_success, run_job
from app.observability.metrics import REPORTS
from app.pricing.book import price_book, refresh_prices
from app.progress import Progress, unwatched
from app.registry import services

REPORT_JOB = "usage_report"
REFRESH_JOB = "price_refresh"
CLEANUP_JOB = "usage_cleanup"
RECONCILE_JOB = "stripe_reconciliation"
JOBS = (REPORT_JOB, REFRESH_JOB, CLEANUP_JOB, RECONCILE_JOB)
MAX_CATCH_UP_DAYS = 35  # Stripe refuses meter events older than this


def days_to_report(today: date) -> list[date]:
    """Yesterday, plus any day missed since the last successful report (beat was down)."""
    yesterday = today - timedelta(days=1)
    last = last_success(REPORT_JOB)
    first = date.fromisoformat(last.period) + timedelta(days=1) if last else yesterday
    first = max(first, today - timedelta(days=MAX_CATCH_UP_DAYS))
    return [first + timedelta(days=n) for n in range((yesterday - first).days + 1)]


def _lease(settings: Settings) -> timedelta:
    return timedelta(seconds=settings.job_lease_seconds)


def run_report(
    settings: Settings,
    day: date | None = None,
    now: datetime | None = None,
    progress: Progress = unwatched,
) -> list[JobRun]:
    now = now or utcnow()
    if day is not None and day >= now.date():
        # A day's usage is complete only once it is over: today's would be billed in
        # part now and the rest as tomorrow's correction, a day late.
        raise ValidationError(
            f"{day} is not over yet (UTC): a day is reported once it has ended", field="date"
        )
    days = [day] if day else days_to_report(now.date())
    stripe = services().stripe
    link_unlinked_customers(
        settings, stripe
    )  # onboarded while Stripe was away: billed from today's report
    runs = []
    for each in days:

        def work(each: date = each) -> dict[str, Any]:
            summary = report_day(settings, stripe, each, now, progress)
            for outcome, customers in summary.as_counts().items():
                if outcome != "customers":
                    REPORTS.labels(outcome).inc(customers)
            if summary.failed:
                raise JobFailed("; ".join(summary.failed)[:2000], summary.as_counts())
            return summary.as_counts()

        runs.append(run_job(REPORT_JOB, each.isoformat(), work, _lease(settings)))
    return runs


def run_price_refresh(settings: Settings, now: datetime | None = None) -> JobRun:
    now = now or utcnow()

    def work() -> dict[str, Any]:
        result = refresh_prices(latest_event_at, settings.pricing_source_url, now)
        price_book.invalidate()
        return {"checked": result.checked, "added": result.added, "sources": len(result.sources)}

    return run_job(REFRESH_JOB, now.date().isoformat(), work, _lease(settings))


def run_cleanup(
    settings: Settings, now: datetime | None = None, progress: Progress = unwatched
) -> JobRun:
    now = now or utcnow()

    def work() -> dict[str, Any]:
        # The last day the report went through, even when some customers failed: each
        # of those is held back by its own unsettled report (customer_cutoffs), the
        # others' retention goes on.
        last = last_completed(REPORT_JOB)
        last_day = date.fromisoformat(last.period) if last else None
        cutoffs = customer_cutoffs(now, settings.usage_retention_days, last_day)
        pace = cleanup_pace(settings)
        accepted_since = now - timedelta(days=settings.max_event_age_days + 1)
        dropped: list[str] = []
        row_cutoffs = cutoffs
        if db.engine.dialect.name == "postgresql":
            # Never a week an event accepted now could still fall in.
            dropped = drop_partitions(cutoffs, accepted_since)
            row_cutoffs = whole_weeks(cutoffs)
        deleted = delete_events_before(row_cutoffs, pace, progress)
        ids = delete_ids_before(accepted_since, pace)
        receipts = delete_receipts_before(now - RECEIPT_RETENTION, pace)
        hours = delete_hours_before(
            now - timedelta(days=settings.usage_hourly_retention_days), pace
        )
        overall = cleanup_cutoff(now, settings.usage_retention_days, last_day)
        return {
            "partitions_dropped": dropped,
            "deleted": deleted,
            "ids_deleted": ids,
            "cutoff": overall.isoformat() if overall else None,
            "customers_held_back": sum(
                len(keys) for cutoff, keys in cutoffs.items() if overall and cutoff < overall
            ),
            "receipts_deleted": receipts,
            "hourly_rows_deleted": hours,
        }

    return run_job(CLEANUP_JOB, now.date().isoformat(), work, _lease(settings))


def reconcile_window(settings: Settings, today: date) -> tuple[date, date]:
    """The days a reconciliation on ``today`` checks: up to yesterday (reported hours
    before), ``RECONCILE_DAYS`` of them."""
    last = today - timedelta(days=1)
    return last - timedelta(days=settings.reconcile_days - 1), last


def run_reconciliation(
    settings: Settings, now: datetime | None = None, progress: Progress = unwatched
) -> JobRun:
    now = now or utcnow()
    first, last = reconcile_window(settings, now.date())

    def work() -> dict[str, Any]:
        result = reconcile(
            services().stripe, settings.stripe_meter_event_name, first, last, now, progress
        )
        return {
            "first_day": first.isoformat(),
            "last_day": last.isoformat(),
            "customers": result.customers,
            "open_differences": result.differences,
            "resolved": result.resolved,
        }

    return run_job(RECONCILE_JOB, now.date().isoformat(), work, _lease(settings))


def _describe(run: JobRun | None) -> dict[str, Any]:
    if run is None:
        return {"period": None, "status": None}
    return {
        "period": run.period,
        "status": run.status,
        "started_at": run.started_at.isoformat(),
        "finished_at": run.finished_at.isoformat() if run.finished_at else None,
        "counts": run.counts,
        "error": run.error,
    }


def job_status(settings: Settings, now: datetime) -> dict[str, Any]:
    """Each job's last run and whether it is overdue, and the reports parked for an operator.

    Healthy when no job failed or is late, no report waits for manual billing, and
    Stripe holds what the ledger says was sent (no open reconciliation difference).

    The report is overdue once the schedule time (plus an hour of slack) has
    passed without yesterday being reported successfully; the others when their
    last success is older than their period plus slack.
    """
    slack = timedelta(hours=2)
    newest = last_runs()
    # No row (a database not made by the migrations): as if installed long ago.
    installed = db.session.scalar(select(Installation.installed_at)) or datetime.min.replace(
        tzinfo=UTC
    )
    jobs: dict[str, dict[str, Any]] = {}
    for job in scheduled_jobs(settings):
        entry = _describe(newest.get(job))
        success = last_success(job)
        if job == REPORT_JOB:
            due = (now - timedelta(hours=settings.report_hour_utc + 1)).date() - timedelta(days=1)
            entry["expected_period"] = due.isoformat()
            # Never run: late once a day has been due since installation.
            first_due = (installed + timedelta(hours=settings.report_hour_utc + 1)).date()
            never_due = success is None and due < first_due
            entry["overdue"] = not never_due and (
                success is None or success.period < due.isoformat()
            )
            late_since = (
                None
                if never_due
                else datetime.combine(due + timedelta(days=1), datetime.min.time(), UTC)
                + timedelta(hours=settings.report_hour_utc + 1)
            )
        else:
            period = timedelta(days=7 if job == CLEANUP_JOB else 1)
            since = success.started_at if success else installed
            entry["overdue"] = since < now - period - slack
            late_since = since + period + slack
        entry["due_by"] = late_since.isoformat() if late_since else None
        entry["last_success_period"] = success.period if success else None
        entry["why"] = _why(entry, success)
        jobs[job] = entry
    manual = reports_needing_manual()
    differences, latest = open_differences()
    healthy = (
        not manual
        and not differences
        and all(not e["overdue"] and e["status"] != JobStatus.FAILED for e in jobs.values())
    )
    return {
        "healthy": healthy,
        "jobs": jobs,
        "manual_reports": {
            "count": len(manual),
            "reports": [
                {"identifier": r.identifier, "day": r.day.isoformat(), "reason": r.last_error}
                for r in manual[:20]
            ],
        },
        "reconciliation": {
            "open_differences": differences,
            "differences": [
                {
                    "customer_id": d.customer_id,
                    "day": d.day.isoformat(),
                    "sent": format(d.sent.normalize(), "f"),
                    "in_stripe": format(d.in_stripe.normalize(), "f"),
                    "found_at": d.found_at.isoformat(),
                }
                for d in latest
            ],
        },
    }


def _why(entry: dict[str, Any], success: Any) -> str | None:
    """What an operator reads about a job that needs attention, in words."""
    if entry.get("status") == JobStatus.FAILED:
        return f"its last run failed: {entry.get('error') or 'no error recorded'}"
    if not entry["overdue"]:
        return None
    if success is None:
        return f"it has never succeeded, and was due by {entry['due_by']}"
    return f"its last success ({success.period}) is older than its schedule allows"


def scheduled_jobs(settings: Settings) -> tuple[str, ...]:
    """The jobs this deployment runs: reconciliation only where Stripe is configured."""
    return JOBS if settings.stripe_api_key else tuple(j for j in JOBS if j != RECONCILE_JOB)
