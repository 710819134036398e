"""``GET /metrics``: the Prometheus exposition of the API's processes.

Under gunicorn the counters of every worker process are summed from the
multiprocess directory; the states are read at the scrape
(``app/api/states.py``). With ``METRICS_TOKEN`` set, a scrape
needs it as a bearer token.
"""

from __future__ import annotations

from collections.abc import Iterator

from flask import Blueprint, Response, current_app, request
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest
from prometheus_client.core import Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

import app.observability.metrics  # noqa: F401 - the metrics exist before the first scrape
from app.api.states import StateCollector
from app.observability.processes import multiprocess
from app.security import require_token

metrics = Blueprint("metrics", __name__)


class Scrape(Collector):
    """What one scrape shows: the counted metrics, then the states read now."""

    def __init__(self, *sources: Collector) -> None:
        self._sources = sources

    def collect(self) -> Iterator[Metric]:
        for source in self._sources:
            yield from source.collect()


def counted() -> Collector:
    """Every process's metrics summed from their files (gunicorn, Celery's pool), or
    this process's own when it is the only one."""
    return MultiProcessCollector(None) if multiprocess() else REGISTRY


@metrics.get("/metrics")
def scrape() -> Response:
    settings = current_app.config["SETTINGS"]
    if settings.metrics_token:
        require_token(request, settings.metrics_token.get_secret_value(), "metrics")
    # The app itself (its proxy would be gone when the collector reads it).
    state = StateCollector(current_app._get_current_object())  # type: ignore[attr-defined]
    return Response(generate_latest(Scrape(counted(), state)), mimetype=CONTENT_TYPE_LATEST)
