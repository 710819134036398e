"""gunicorn's configuration for ``make api``: the API's metrics directory, emptied as
the arbiter starts, and each dead worker's live gauges dropped."""

from __future__ import annotations

from typing import Any

from app.config import Settings
from app.observability.processes import use_metrics_dir

use_metrics_dir(Settings.from_env().metrics_path, "api")


def child_exit(server: Any, worker: Any) -> None:
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)
