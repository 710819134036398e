"""Retention while ingest runs: the oldest weeks of the scale data (``reads``) go as
the weekly job takes them, partitions decided from the daily rollup and detached
concurrently, in a process of their own; ingest's rate with and without it."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from app.ingest.partitions import WEEK, week_of
from bench.load import BATCH, make_events, post_batches
from bench.stack import EVENTS, ROOT, SCALE_EVENTS, Run, Stack, log, pg, recorded, wait_until

ORDER = 60
ENABLED = SCALE_EVENTS > 0  # it drops weeks of the data ``reads`` loaded
_CLEANUP = (
    "import json, sys, time; from datetime import datetime; from app import create_app;"
    "from sqlalchemy import text; from app.extensions import db;"
    "from app.services.cleanup import drop_partitions;"
    "app = create_app(); app.app_context().push();"
    "keys = list(db.session.scalars(text('SELECT DISTINCT api_key_hash FROM usage_daily')));"
    "until = datetime.fromisoformat(sys.argv[1]);"
    "db.session.rollback(); print('dropping', flush=True);"
    "t = time.perf_counter();"
    "dropped = drop_partitions({until: keys}, until);"
    "print(json.dumps({'dropped': dropped, 's': time.perf_counter() - t}))"
)


def run(run: Run, results: dict[str, Any]) -> None:
    log("cleanup: the oldest weeks' partitions dropped while ingest runs")
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

    # The oldest full week of the 90 days loaded, and the partial one before it.
    until = week_of(now - timedelta(days=90)) + 2 * WEEK
    with conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM usage_events WHERE created_at < %s", (until,))
        rows = cur.fetchone()[0]
    first, second = bodies(1), bodies(2)
    time.sleep(3)
    normal = ingest_rate(first, "ingest alone")
    cleanup = subprocess.Popen(
        [sys.executable, "-c", _CLEANUP, until.isoformat()],
        cwd=ROOT,
        env={**stack.env, "AUTO_MIGRATE": "false"},
        stdout=subprocess.PIPE,
        text=True,
    )
    assert cleanup.stdout is not None and cleanup.stdout.readline().strip() == "dropping"
    during = ingest_rate(second, "ingest during the cleanup")
    deleted = json.loads(cleanup.communicate()[0])
    stack.stop()
    conn.close()
    results["cleanup"] = {
        "deleted": rows,
        "partitions": len(deleted["dropped"]),
        "seconds": round(deleted["s"], 3),
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
        (
            "cleanup: oldest weeks dropped (rows, partitions, s)",
            f"{cl['deleted']:,}, {cl.get('partitions')}, {cl['seconds']}",
            "<= 1 s",
        ),
        ("ingest during cleanup / normal (overlap)", f"{cl['ratio']} ({cl['overlap']})", ">= 0.98"),
    ]
