"""Figures read when Prometheus scrapes the API: states, not events.

- the spool: segments not yet confirmed recorded, and the age of the oldest
  (this host's; every API process of a host shares its spool directory);
- the broker's queue depth;
- from PostgreSQL: reports waiting for manual billing, open reconciliation
  differences, models with unpriced events today or yesterday, how long
  ago each scheduled job last succeeded, and the ledger's weeks made ahead.

Only the API exports these (one of its processes per scrape), so no figure is
counted twice across roles.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

from flask import Flask
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import distinct, func, select

from app.billing.reconcile import open_difference_count
from app.billing.report import reports_needing_manual
from app.columns import utcnow
from app.extensions import db
from app.ingest.models import UsageDaily
from app.ingest.partitions import partitions, week_of
from app.jobs.definitions import scheduled_jobs
from app.jobs.runner import last_success
from app.registry import services


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)


class StateCollector(Collector):
    def __init__(self, app: Flask) -> None:
        self._app = app

    def collect(self) -> Iterator[Metric]:
        outbox = services(self._app).outbox
        segments, oldest = outbox.backlog()
        yield _gauge("ub_spool_segments", "Spool segments not yet recorded", segments)
        yield _gauge("ub_spool_oldest_age_seconds", "Age of the oldest spool segment", oldest)
        try:
            depth = outbox.queue_depth()
        except Exception:  # the broker is down: the spool's age tells the story
            depth = None
        if depth is not None:
            yield _gauge("ub_queue_depth", "Batches waiting in the broker's queue", depth)
        with self._app.app_context():
            try:
                yield from self._ledger()
            finally:
                db.session.remove()

    def _ledger(self) -> Iterator[Metric]:
        settings = self._app.config["SETTINGS"]
        now = utcnow()
        yield _gauge(
            "ub_reports_needs_manual",
            "Reports parked for an operator",
            len(reports_needing_manual()),
        )
        yield _gauge(
            "ub_reconciliation_open_differences",
            "Customer-days where Stripe holds other than the ledger sent",
            open_difference_count(),
        )
        unpriced = db.session.scalar(
            select(func.count(distinct(UsageDaily.model))).where(
                UsageDaily.unpriced_events > 0, UsageDaily.day >= now.date() - timedelta(days=1)
            )
        )
        yield _gauge(
            "ub_unpriced_models", "Models with unpriced events today or yesterday", unpriced or 0
        )
        ages = GaugeMetricFamily(
            "ub_job_last_success_age_seconds",
            "Seconds since each scheduled job last succeeded (absent: never)",
            labels=["job"],
        )
        for job in scheduled_jobs(settings):
            run = last_success(job)
            if run is not None and run.finished_at is not None:
                ages.add_metric([job], (now - run.finished_at).total_seconds())
        yield ages
        if db.engine.dialect.name == "postgresql":
            this_week = week_of(now)
            ahead = sum(p.start > this_week for p in partitions(db.session.connection()))
            yield _gauge(
                "ub_ledger_weeks_ahead", "Weeks of the ledger's partitions made ahead", ahead
            )
