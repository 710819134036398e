"""The Celery entry point: ``celery -A tasks.worker worker`` / ``beat`` / ``flower``.

A worker or Beat first takes its metrics directory (before anything loads
prometheus_client) and serves its metrics on its port once it has started.
"""

import sys
from typing import Any

from celery.signals import (
    beat_init,
    before_task_publish,
    celeryd_init,
    worker_process_init,
    worker_process_shutdown,
)

from app.config import Settings
from app.observability.processes import celery_role, use_metrics_dir

ROLE = celery_role(sys.argv)
if ROLE is not None:
    use_metrics_dir(Settings.from_env().metrics_path, ROLE)

from app import create_app_for_serving  # noqa: E402 - after the metrics directory is set
from app.database import forget_inherited_connections  # noqa: E402
from app.jobs.timetable import beat_schedule  # noqa: E402
from app.observability.exporter import forget_process, serve_metrics  # noqa: E402
from app.observability.metrics import BEAT_SENT, at_zero  # noqa: E402
from app.pricing.book import price_book  # noqa: E402
from app.registry import services  # noqa: E402

flask_app = create_app_for_serving()
celery_app = flask_app.extensions["celery"]
settings = flask_app.config["SETTINGS"]


@celeryd_init.connect
def serve_worker_metrics(**_: Any) -> None:
    serve_metrics(settings.worker_metrics_port)


@beat_init.connect
def serve_beat_metrics(**_: Any) -> None:
    at_zero(BEAT_SENT, *((entry["task"],) for entry in beat_schedule(settings).values()))
    serve_metrics(settings.beat_metrics_port)


@before_task_publish.connect
def count_scheduled(sender: str | None = None, **_: Any) -> None:
    """Beat sends only scheduled tasks; a worker's sends (alerts) are not counted here."""
    if ROLE == "beat":
        BEAT_SENT.labels(sender or "unknown").inc()


@worker_process_init.connect
def open_own_connections(**_: Any) -> None:
    """A prefork pool process opens its own sockets: none is shared with the parent.

    ``create_app`` already closed what start-up opened; this drops anything the
    parent opened since, so two processes never write on one connection.
    """
    forget_inherited_connections(flask_app)
    store = services(flask_app).batches
    if store is not None:
        store.forget_connections()
    price_book.invalidate()


@worker_process_shutdown.connect
def drop_process_metrics(**_: Any) -> None:
    forget_process()
