"""Running a scheduled job once per period, and recording it in ``job_runs``.

The running row is the lock: a partial unique index allows one ``running`` row
per (job, period), so a second concurrent run fails at INSERT. It is a lease: the
holder renews it every third of ``JOB_LEASE_SECONDS`` from a thread of its own,
for as long as it lives. A run whose lease lapsed, or whose holder on this host
is no longer a process, is dead, and is taken over at once (a report killed part
way no longer holds its day for an hour).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError

from app.columns import utcnow
from app.errors import JobAlreadyRunning
from app.extensions import db
from app.jobs.models import JobRun, JobStatus

log = logging.getLogger("usage_billing.jobs")


class JobFailed(Exception):
    """The job ran to the end but did not do all its work (e.g. a customer failed)."""

    def __init__(self, message: str, counts: dict[str, Any]) -> None:
        super().__init__(message)
        self.counts = counts


def _holder() -> str:
    """This process, as a running row names it (a fork has another pid)."""
    return f"{socket.gethostname()}:{os.getpid()}"


def _gone(holder: str | None) -> bool:
    """Whether the process holding a run is known to be gone: it ran on this host, and
    no process has its pid. A holder elsewhere is left to its lease."""
    host, _, pid = (holder or "").rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # a process of another user has that pid: alive
        return False
    return False


def _expire_dead(job: str, period: str, lease: timedelta) -> None:
    now = utcnow()
    running = db.session.scalars(
        select(JobRun).where(
            JobRun.job == job, JobRun.period == period, JobRun.status == JobStatus.RUNNING
        )
    ).all()
    for run in running:
        last = run.heartbeat_at or run.started_at
        if last < now - lease or _gone(run.holder):
            run.status, run.finished_at = JobStatus.FAILED, now
            run.error = f"abandoned: its process ({run.holder}) died"
            log.warning("taking over a dead run", extra={"job": job, "period": period})
    db.session.commit()


def _start(job: str, period: str, lease: timedelta) -> JobRun:
    _expire_dead(job, period, lease)
    now = utcnow()
    run = JobRun(
        job=job,
        period=period,
        status=JobStatus.RUNNING,
        started_at=now,
        holder=_holder(),
        heartbeat_at=now,
    )
    db.session.add(run)
    try:
        db.session.commit()
    except IntegrityError as exc:
        db.session.rollback()
        raise JobAlreadyRunning(f"{job} for {period} is already running") from exc
    return run


class _Heartbeat:
    """Renews a running row's lease from a thread while the run lasts, on a connection
    of its own (the run's session is the work's)."""

    def __init__(self, run_id: int, lease: timedelta) -> None:
        self._engine = db.engine
        self._run_id = run_id
        self._every = max(lease.total_seconds() / 3, 0.05)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="job-lease", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(self._every):
            try:
                with self._engine.begin() as conn:
                    conn.execute(
                        update(JobRun)
                        .where(JobRun.id == self._run_id, JobRun.status == JobStatus.RUNNING)
                        .values(heartbeat_at=utcnow())
                    )
            except Exception as exc:  # noqa: BLE001 - the database away: the next beat retries
                log.warning("job lease not renewed: %s", type(exc).__name__)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not threading.current_thread():
            self._thread.join()


def run_job(job: str, period: str, work: Callable[[], dict[str, Any]], lease: timedelta) -> JobRun:
    """Run ``work`` under the (job, period) lock and record how it went.

    The lock is held as a lease renewed while this process lives; a run whose holder
    died is taken over (``_expire_dead``).

    ``work`` returns its counts; it raises ``JobFailed`` (with counts) when it
    finished but left something undone. Either failure is recorded and re-raised
    so the Celery task retries.
    """
    run = _start(job, period, lease)
    run_id = run.id
    heartbeat = _Heartbeat(run_id, lease)
    try:
        counts = work()
    except JobFailed as exc:
        db.session.rollback()
        _finish(run_id, JobStatus.FAILED, exc.counts, str(exc))
        raise
    except Exception as exc:
        db.session.rollback()
        _finish(run_id, JobStatus.FAILED, None, f"{type(exc).__name__}: {exc}")
        raise
    finally:  # whatever ended the work (an exit too): the lease is no longer renewed
        heartbeat.stop()
    return _finish(run_id, JobStatus.SUCCEEDED, counts, None)


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


def last_completed(job: str) -> JobRun | None:
    """The newest run that went through its work: succeeded, or failed having done what
    it could (``JobFailed``: some part of it, a customer, left undone), not one that
    crashed part way."""
    return db.session.scalar(
        select(JobRun)
        .where(
            JobRun.job == job,
            (JobRun.status == JobStatus.SUCCEEDED)
            | ((JobRun.status == JobStatus.FAILED) & JobRun.counts.is_not(None)),
        )
        .order_by(JobRun.period.desc())
        .limit(1)
    )


def last_success(job: str) -> JobRun | None:
    return db.session.scalar(
        select(JobRun)
        .where(JobRun.job == job, JobRun.status == JobStatus.SUCCEEDED)
        .order_by(JobRun.period.desc())
        .limit(1)
    )
