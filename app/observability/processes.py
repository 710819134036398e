"""Which metrics directory a process writes to, decided before prometheus_client loads.

Under gunicorn and Celery's prefork pool many processes count the same metrics;
prometheus_client's multiprocess mode has each write its values to files in
``PROMETHEUS_MULTIPROC_DIR``, and one exporter sums them. Each role (the API's
gunicorn, a worker, Beat) gets a directory of its own under ``METRICS_DIR``,
emptied when the role starts, so two exporters never count one process. The
variable must be set before the first metric is made: the gunicorn config
(``app.observability.gunicorn_conf``) and ``tasks/worker.py`` call
``use_metrics_dir`` first thing. Any other process (a ``flask`` command, the
tests) keeps its metrics in memory.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path


def celery_role(argv: list[str]) -> str | None:
    """``worker`` or ``beat`` for those Celery commands; None for any other
    (``inspect``, ``flower``), which must not empty a running role's directory."""
    for word in argv[1:]:
        if word in ("worker", "beat"):
            return word
    return None


def use_metrics_dir(base: Path, role: str) -> Path:
    """Point prometheus_client at an emptied directory for ``role``; call once, in the
    role's first process, before any metric is made."""
    directory = base / role
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True, exist_ok=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(directory)
    if "prometheus_client" in sys.modules:
        # Celery's command line loads Flower's plugin, and with it prometheus_client,
        # before it imports our app: the value class it chose then is chosen again,
        # before any metric of ours exists.
        from prometheus_client import values

        values.ValueClass = values.get_value_class()
    return directory


def multiprocess() -> bool:
    return bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
