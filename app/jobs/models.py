"""Scheduled job runs: the history operators read, and the per-period lock.

A partial unique index on (job, period) WHERE status = 'running' makes a second
concurrent run of the same job for the same period fail at INSERT, on both
PostgreSQL and SQLite, without any lock server. The running row names its holder
(host and process) and is renewed while the holder lives (``heartbeat_at``): a row
whose holder is gone is taken over (``app.jobs.runner``).
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import JSON, Index, Integer, String, Text, text
from sqlalchemy.orm import Mapped, mapped_column

from app.columns import UTCDateTime, utcnow
from app.extensions import Model


class JobStatus(StrEnum):
    RUNNING = "running"  # holds the (job, period) lock while its holder lives
    SUCCEEDED = "succeeded"
    FAILED = "failed"


class JobRun(Model):
    __tablename__ = "job_runs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job: Mapped[str] = mapped_column(String(64))
    period: Mapped[str] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(16), default=JobStatus.RUNNING)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    counts: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    error: Mapped[str | None] = mapped_column(Text)
    holder: Mapped[str | None] = mapped_column(String(128))  # "host:pid" of the running process
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    __table_args__ = (
        Index(
            "uq_job_runs_running",
            "job",
            "period",
            unique=True,
            postgresql_where=text("status = 'running'"),
            sqlite_where=text("status = 'running'"),
        ),
        Index("ix_job_runs_job_started", "job", "started_at"),
    )


class Installation(Model):
    """When the service was installed (or upgraded to migration 0019): a job that has
    never run is late only once it has been due since then."""

    __tablename__ = "installation"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    installed_at: Mapped[datetime] = mapped_column(UTCDateTime)
