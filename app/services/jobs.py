"""Running a scheduled job once per period, and recording it in ``job_runs``.

The running row is the lock: a partial unique index allows one ``running`` row
per (job, period), so a second concurrent run fails at INSERT. A run that has
been ``running`` for longer than ``JOB_STALE_AFTER_SECONDS`` belonged to a dead
process and is taken over.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError

from app.errors import JobAlreadyRunning
from app.extensions import db
from app.models import JobRun
from app.models.jobs import FAILED, RUNNING, SUCCEEDED
from app.models.types import utcnow

log = logging.getLogger("usage_billing.jobs")


class JobFailed(Exception):
    """The job ran to the end but did not do all its work (e.g. a customer failed)."""

    def __init__(self, message: str, counts: dict[str, Any]) -> None:
        super().__init__(message)
        self.counts = counts


def _expire_stale(job: str, period: str, stale_after: timedelta) -> None:
    db.session.execute(
        update(JobRun)
        .where(
            JobRun.job == job,
            JobRun.period == period,
            JobRun.status == RUNNING,
            JobRun.started_at < utcnow() - stale_after,
        )
        .values(status=FAILED, finished_at=utcnow(), error="abandoned: the process running it died")
    )
    db.session.commit()


def _start(job: str, period: str, stale_after: timedelta) -> JobRun:
    _expire_stale(job, period, stale_after)
    run = JobRun(job=job, period=period, status=RUNNING, started_at=utcnow())
    db.session.add(run)
    try:
        db.session.commit()
    except IntegrityError as exc:
        db.session.rollback()
        raise JobAlreadyRunning(f"{job} for {period} is already running") from exc
    return run


def run_job(
    job: str, period: str, work: Callable[[], dict[str, Any]], stale_after: timedelta
) -> JobRun:
    """Run ``work`` under the (job, period) lock and record how it went.

    A run still ``running`` after ``stale_after`` is taken to be dead and is taken over.

    ``work`` returns its counts; it raises ``JobFailed`` (with counts) when it
    finished but left something undone. Either failure is recorded and re-raised
    so the Celery task retries.
    """
    run = _start(job, period, stale_after)
    run_id = run.id
    try:
        counts = work()
    except JobFailed as exc:
        db.session.rollback()
        _finish(run_id, FAILED, exc.counts, str(exc))
        raise
    except Exception as exc:
        db.session.rollback()
        _finish(run_id, FAILED, None, f"{type(exc).__name__}: {exc}")
        raise
    return _finish(run_id, SUCCEEDED, counts, None)


def _finish(run_id: int, status: str, counts: dict[str, Any] | None, error: str | None) -> JobRun:
    run = db.session.get(JobRun, run_id)
    assert run is not None
    run.status, run.counts, run.error, run.finished_at = status, counts, error, utcnow()
    db.session.commit()
    log.info("job finished", extra={"job": run.job, "period": run.period, "status": status})
    return run


def last_runs() -> dict[str, JobRun]:
    """The newest run of each job."""
    newest: dict[str, JobRun] = {}
    for run in db.session.scalars(select(JobRun).order_by(JobRun.started_at)):
        newest[run.job] = run
    return newest


def last_success(job: str) -> JobRun | None:
    return db.session.scalar(
        select(JobRun)
        .where(JobRun.job == job, JobRun.status == SUCCEEDED)
        .order_by(JobRun.period.desc())
        .limit(1)
    )
