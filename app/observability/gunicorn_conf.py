"""gunicorn's configuration for ``make api``: the API's metrics directory, emptied as
the arbiter starts, each dead worker's live gauges dropped, and whom to believe about
the scheme.

gunicorn itself rewrites ``wsgi.url_scheme`` from ``X-Forwarded-Proto`` when the
request comes from ``forwarded_allow_ips`` (127.0.0.1 by its default): with
``TRUST_PROXY=false`` any local process could then pass a request off as https. Only
a proxy we were told of is believed: ``TRUST_PROXY`` decides, here as in the app.
"""

from __future__ import annotations

from typing import Any

from app.config import Settings
from app.observability.processes import use_metrics_dir

_settings = Settings.from_env()
use_metrics_dir(_settings.metrics_path, "api")
if not _settings.trust_proxy:
    # Believe no one's forwarded headers. With a trusted proxy, gunicorn's own setting
    # stands (FORWARDED_ALLOW_IPS; 127.0.0.1 by default), and the app's ProxyFix reads
    # one hop (app/dashboard/session.py).
    forwarded_allow_ips = ""


def child_exit(server: Any, worker: Any) -> None:
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)
