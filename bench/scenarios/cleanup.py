"""Retention while ingest runs: delete the oldest week of the scale data (``reads``)
in a process of its own, with the job's own pace, and compare ingest's rate with
and without it."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from bench.load import BATCH, make_events, post_batches
from bench.stack import EVENTS, ROOT, SCALE_EVENTS, Run, Stack, log, pg, recorded, wait_until

ORDER = 60
ENABLED = SCALE_EVENTS > 0  # it deletes from the data ``reads`` loaded
_CLEANUP = (
    "import json, sys, time; from datetime import datetime; from app import create_app;"
    "from sqlalchemy import text; from app.extensions import db;"
    "from app.services.cleanup import cleanup_pace, delete_events_before;"
    "app = create_app(); app.app_context().push();"
    "keys = list(db.session.scalars(text('SELECT DISTINCT api_key_hash FROM usage_events')));"
    "db.session.rollback(); print('deleting', flush=True);"
    "t = time.perf_counter();"
    "rows = delete_events_before({datetime.fromisoformat(sys.argv[1]): keys},"
    " cleanup_pace(app.config['SETTINGS']));"
    "print(json.dumps({'rows': rows, 's': time.perf_counter() - t}))"
)


def run(run: Run, results: dict[str, Any]) -> None:
    log("cleanup: a week of events deleted while ingest runs")
    stack = Stack(run, port=8714)
    stack.start_api()
    stack.start_worker()
    conn = pg(run.db_url)
    now = datetime.now(UTC)
    n = min(EVENTS, 200_000)

    def bodies(offset: int) -> list[bytes]:
        return [
            json.dumps(
                {
                    "events": [
                        dict(e, event_id=f"c{offset}-{e['event_id']}")
                        for e in make_events(BATCH, i, now)
                    ]
                }
            ).encode()
            for i in range(0, n, BATCH)
        ]

    def ingest_rate(batches: list[bytes], label: str) -> float:
        since = datetime.now(UTC)
        t = time.perf_counter()
        post_batches(stack.port, batches)
        wait_until(label, n, lambda: recorded(conn, since))
        return n / (time.perf_counter() - t)

    first, second = bodies(1), bodies(2)
    time.sleep(3)
    normal = ingest_rate(first, "ingest alone")
    cleanup = subprocess.Popen(
        [sys.executable, "-c", _CLEANUP, (now - timedelta(days=83)).isoformat()],
        cwd=ROOT,
        env={**stack.env, "AUTO_MIGRATE": "false"},
        stdout=subprocess.PIPE,
        text=True,
    )
    assert cleanup.stdout is not None and cleanup.stdout.readline().strip() == "deleting"
    during = ingest_rate(second, "ingest during the cleanup")
    deleted = json.loads(cleanup.communicate()[0])
    stack.stop()
    conn.close()
    results["cleanup"] = {
        "deleted": deleted["rows"],
        "seconds": round(deleted["s"], 1),
        # Share of the measured ingest that ran while the cleanup was deleting.
        "overlap": round(min(1.0, deleted["s"] / (n / during)), 2),
        "ingest_normal_per_s": round(normal),
        "ingest_during_cleanup_per_s": round(during),
        "ratio": round(during / normal, 3),
    }


def headline(results: dict[str, Any]) -> dict[str, Any]:
    return {"cleanup_ingest_ratio": results.get("cleanup", {}).get("ratio")}


def rows(results: dict[str, Any]) -> list[tuple[str, Any, str]]:
    cl = results.get("cleanup")
    if not cl:
        return []
    return [
        ("cleanup of a week (rows, s)", f"{cl['deleted']:,} in {cl['seconds']}", ""),
        ("ingest during cleanup / normal (overlap)", f"{cl['ratio']} ({cl['overlap']})", ">= 0.8"),
    ]
