"""Single metered requests as fast as the API serves them: do the workers keep up?

The load comes from raw sockets in threads, one request per connection. Keeping
up means the queue stays flat and every metered call is a stored row soon after
the load stops.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import redis

from app.progress import progress_bar
from app.security import hash_api_key
from bench.load import execute_request, one_request
from bench.stack import REDIS_URL, Run, Stack, log, pg

ORDER = 40
SECONDS = 20
THREADS = 16


def run(run: Run, results: dict[str, Any]) -> None:
    log("metering: single metered requests as fast as the API serves them, workers keeping up")
    stack = Stack(run, middleware=True, port=8715)
    stack.start_api(workers=2)
    stack.start_worker()
    try:
        results["single_requests"] = _sustained(stack.port, run.db_url)
    finally:
        stack.stop()


def _sustained(port: int, db_url: str) -> dict[str, Any]:
    queue = redis.Redis.from_url(REDIS_URL)
    conn = pg(db_url)
    keys = [f"bench-single-{k}" for k in range(THREADS)]
    hashes = [hash_api_key(key) for key in keys]

    def stored() -> int:
        with conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM usage_events WHERE api_key_hash = ANY(%s)", (hashes,))
            return cur.fetchone()[0]

    stop = time.monotonic() + SECONDS
    sent = [0] * THREADS
    depth: list[int] = []

    def client(k: int) -> None:
        request = execute_request(keys[k])
        while time.monotonic() < stop:
            status = one_request(port, request)
            if status != 200:
                raise RuntimeError(f"/v1/execute answered {status}")
            sent[k] += 1

    clients = [threading.Thread(target=client, args=(k,)) for k in range(THREADS)]
    for each in clients:
        each.start()
    with progress_bar(f"{SECONDS} s of single requests") as progress:
        while time.monotonic() < stop:
            depth.append(queue.llen("celery"))
            progress(len(depth), SECONDS)
            time.sleep(1)
    for each in clients:
        each.join()
    stopped = time.monotonic()
    total = sum(sent)
    while stored() < total and time.monotonic() - stopped < 120:
        time.sleep(0.1)
    rows = stored()
    conn.close()
    return {
        "requests_per_s": round(total / SECONDS),
        "sent": total,
        "stored": rows,
        "all_stored_s_after_load": round(time.monotonic() - stopped, 2),
        "queue_depth_first_half_max": max(depth[: len(depth) // 2] or [0]),
        "queue_depth_second_half_max": max(depth[len(depth) // 2 :] or [0]),
    }


def headline(results: dict[str, Any]) -> dict[str, Any]:
    return {"single_requests_per_s": results.get("single_requests", {}).get("requests_per_s")}


def rows(results: dict[str, Any]) -> list[tuple[str, Any, str]]:
    single = results.get("single_requests")
    if not single:
        return []
    return [("single metered req/s kept up", single["requests_per_s"], ">= 2,000")]
