"""The metrics endpoint of a worker or Beat: an HTTP server in the role's main process,
summing what its processes counted (Celery's pool processes write files)."""

from __future__ import annotations

import logging
import os

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

from app.observability.processes import multiprocess

log = logging.getLogger("usage_billing.metrics")


def serve_metrics(port: int) -> None:
    """Serve ``/metrics`` on ``port`` (0: not at all); a port in use is logged, not fatal:
    metering goes on without its metrics."""
    if not port:
        return
    registry = None
    if multiprocess():
        registry = CollectorRegistry()
        MultiProcessCollector(registry)
    try:
        if registry is None:
            start_http_server(port)
        else:
            start_http_server(port, registry=registry)
    except OSError as exc:
        log.warning("metrics not served on port %d: %s", port, exc)
        return
    log.info("metrics served on port %d", port)


def forget_process() -> None:
    """A pool process ends: its live gauges stop counting (counters stay summed)."""
    if multiprocess():
        mark_process_dead(os.getpid())
