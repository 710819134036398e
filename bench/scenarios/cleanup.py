"""Retention while ingest runs, both ways, in one run over the scale data (``reads``):
the old row-by-row delete of one week at the job's pace, and the weekly job's
partition drop (weeks decided from the daily rollup, detached concurrently) of
the oldest weeks; each in a process of its own, and ingest's rate meanwhile
against its rate alone."""

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
ENABLED = SCALE_EVENTS > 0  # it removes weeks of the data ``reads`` loaded
_PRELUDE = (
    "import json, sys, time; from datetime import datetime; from app import create_app;"
    "from sqlalchemy import text; from app.extensions import db;"
    "from app.ingest.retention import cleanup_pace, delete_events_before, drop_partitions;"
    "app = create_app(); app.app_context().push();"
    "keys = list(db.session.scalars(text('SELECT DISTINCT api_key_hash FROM usage_daily')));"
    "end = datetime.fromisoformat(sys.argv[1]);"
    "db.session.rollback(); print('started', flush=True); t = time.perf_counter();"
)
# The current delete, row by row in bounded batches, resting between them: of the
# week before ``end`` alone, the weeks before it being dropped already.
_DELETE = _PRELUDE + (
    "delete_events_before({end: keys}, cleanup_pace(app.config['SETTINGS']));"
    "print(json.dumps({'s': time.perf_counter() - t}))"
)
# The weekly job's way: every week ending by ``end`` whose keys may all go.
_DROP = _PRELUDE + (
    "dropped = drop_partitions({end: keys}, end);"
    "print(json.dumps({'s': time.perf_counter() - t, 'dropped': dropped}))"
)


def run(run: Run, results: dict[str, Any]) -> None:
    log("cleanup: a week deleted row by row, then weeks' partitions dropped, while ingest runs")
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

    def rows_before(instant: datetime) -> int:
        with conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM usage_events WHERE created_at < %s", (instant,))
            return int(cur.fetchone()[0])

    def during(script: str, end: datetime, batches: list[bytes]) -> dict:
        work = subprocess.Popen(
            [sys.executable, "-c", script, end.isoformat()],
            cwd=ROOT,
            env={**stack.env, "AUTO_MIGRATE": "false"},
            stdout=subprocess.PIPE,
            text=True,
        )
        assert work.stdout is not None and work.stdout.readline().strip() == "started"
        rate = ingest_rate(batches, "ingest during the cleanup")
        done = json.loads(work.communicate()[0])
        return {**done, "rate": rate, "overlap": min(1.0, done["s"] / (n / rate))}

    # The partial oldest week of the 90 days loaded goes first, untimed; then the
    # next week's partition is dropped, and the week after it deleted row by row.
    oldest = week_of(now - timedelta(days=90))
    dropped_week, deleted_week = oldest + WEEK, oldest + 2 * WEEK
    batches = [bodies(k) for k in range(3)]
    subprocess.run(
        [sys.executable, "-c", _DROP, (oldest + WEEK).isoformat()],
        cwd=ROOT,
        env={**stack.env, "AUTO_MIGRATE": "false"},
        check=True,
        capture_output=True,
    )
    time.sleep(3)
    normal = ingest_rate(batches[0], "ingest alone")
    dropped_rows = rows_before(dropped_week + WEEK)
    drop = during(_DROP, dropped_week + WEEK, batches[1])
    week_rows = rows_before(deleted_week + WEEK)
    delete = during(_DELETE, deleted_week + WEEK, batches[2])
    stack.stop()
    conn.close()
    results["cleanup"] = {
        "row_delete": {
            "rows": week_rows,
            "seconds": round(delete["s"], 1),
            "overlap": round(delete["overlap"], 2),
            "ingest_per_s": round(delete["rate"]),
            "ratio": round(delete["rate"] / normal, 3),
        },
        "partition_drop": {
            "rows": dropped_rows,
            "partitions": len(drop["dropped"]),
            "seconds": round(drop["s"], 3),
            "overlap": round(drop["overlap"], 2),
            "ingest_per_s": round(drop["rate"]),
            "ratio": round(drop["rate"] / normal, 3),
        },
        "ingest_normal_per_s": round(normal),
    }


def headline(results: dict[str, Any]) -> dict[str, Any]:
    cleanup = results.get("cleanup", {})
    return {
        "cleanup_drop_s": cleanup.get("partition_drop", {}).get("seconds"),
        "cleanup_ingest_ratio": cleanup.get("partition_drop", {}).get("ratio"),
    }


def rows(results: dict[str, Any]) -> list[tuple[str, Any, str]]:
    cl = results.get("cleanup")
    if not cl:
        return []
    delete, drop = cl["row_delete"], cl["partition_drop"]
    return [
        (
            "cleanup, the current delete of a week: rows, s; ingest / normal (overlap)",
            f"{delete['rows']:,}, {delete['seconds']}; {delete['ratio']} ({delete['overlap']})",
            "",
        ),
        (
            "cleanup, weeks' partitions dropped: rows, partitions, s; ingest / normal (overlap)",
            f"{drop['rows']:,}, {drop['partitions']}, {drop['seconds']}; "
            f"{drop['ratio']} ({drop['overlap']})",
            "<= 1 s; >= 0.98",
        ),
    ]
