"""Single metered requests as fast as the API serves them: do the workers keep up?

The load comes from raw sockets in threads, one request per connection. Keeping
up means the queue stays flat and every metered call is a stored row soon after
the load stops. Before it, the same load against a bare Flask view under gunicorn
with the same worker model (``bench/bare_app.py``): the rate this machine serves
in this run at all, which the metered rate is read beside (the machine's speed
swings 2x by the hour; the ratio does not). The same view is then served by
uWSGI (its HTTP parser in C), the same processes and threads, the same load: what
the framework's server costs here, beside what ours adds.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis

from app.progress import progress_bar
from app.security import hash_api_key
from bench.load import execute_request, one_request
from bench.stack import REDIS_URL, ROOT, Run, Stack, log, pg, wait_until_serving

ORDER = 40
SECONDS = 20
BASELINE_SECONDS = 10
THREADS = 16
BARE_PORT = 8716


def run(run: Run, results: dict[str, Any]) -> None:
    log("metering: a bare gunicorn+Flask view first, the same load: this run's baseline")
    bare = _bare_requests_per_s(_GUNICORN)
    log("metering: the same bare view under uWSGI, the same load")
    bare_uwsgi = _bare_requests_per_s(_UWSGI)
    log("metering: single metered requests as fast as the API serves them, workers keeping up")
    stack = Stack(run, middleware=True, port=8715)
    stack.start_api(workers=2)
    stack.start_worker()
    try:
        single = _sustained(stack.port, run.db_url)
    finally:
        stack.stop()
    single["bare_flask_requests_per_s"] = bare
    single["bare_uwsgi_requests_per_s"] = bare_uwsgi
    single["of_bare"] = round(single["requests_per_s"] / bare, 2)
    results["single_requests"] = single


# The bare view's servers, each with ``make api``'s worker model: 2 processes of 2 threads.
_ADDRESS = f"127.0.0.1:{BARE_PORT}"
_GUNICORN = [
    *(sys.executable, "-m", "gunicorn", "--bind", _ADDRESS, "bench.bare_app:app"),
    *"--workers 2 --worker-class gthread --threads 2".split(),
]
_UWSGI = [
    *(str(Path(sys.executable).with_name("uwsgi")), "--http-socket", _ADDRESS),
    *"--module bench.bare_app:app --processes 2 --threads 2 --master --die-on-term".split(),
]


def _bare_requests_per_s(command: list[str]) -> int:
    """What ``bench/bare_app.py`` serves under ``command``, the same load."""
    server = subprocess.Popen(
        command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        wait_until_serving(BARE_PORT)
        sent = _load(BARE_PORT, [f"bench-bare-{k}" for k in range(THREADS)], BASELINE_SECONDS)
        return round(sum(sent) / BASELINE_SECONDS)
    finally:
        server.terminate()
        server.wait(timeout=30)


def _load(
    port: int, keys: list[str], seconds: float, each_second: Callable[[], object] | None = None
) -> list[int]:
    """A client per key, one request per connection, for ``seconds``: each one's count.
    ``each_second()`` runs once a second meanwhile (a sample of the queue)."""
    stop = time.monotonic() + seconds
    sent = [0] * len(keys)

    def client(k: int) -> None:
        request = execute_request(keys[k])
        while time.monotonic() < stop:
            status = one_request(port, request)
            if status != 200:
                raise RuntimeError(f"/v1/execute answered {status}")
            sent[k] += 1

    clients = [threading.Thread(target=client, args=(k,)) for k in range(len(keys))]
    for each in clients:
        each.start()
    with progress_bar(f"{seconds} s of single requests on :{port}") as progress:
        ticks = 0
        while time.monotonic() < stop:
            ticks += 1
            if each_second is not None:
                each_second()
            progress(ticks, seconds)
            time.sleep(1)
    for each in clients:
        each.join()
    return sent


def _sustained(port: int, db_url: str) -> dict[str, Any]:
    queue = redis.Redis.from_url(REDIS_URL)
    conn = pg(db_url)
    keys = [f"bench-single-{k}" for k in range(THREADS)]
    hashes = [hash_api_key(key) for key in keys]

    def stored() -> int:
        with conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM usage_events WHERE api_key_hash = ANY(%s)", (hashes,))
            return cur.fetchone()[0]

    depth: list[int] = []
    sent = _load(port, keys, SECONDS, lambda: depth.append(queue.llen("celery")))
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
    single = results.get("single_requests", {})
    return {
        "single_requests_per_s": single.get("requests_per_s"),
        "bare_flask_requests_per_s": single.get("bare_flask_requests_per_s"),
        "bare_uwsgi_requests_per_s": single.get("bare_uwsgi_requests_per_s"),
    }


def rows(results: dict[str, Any]) -> list[tuple[str, Any, str]]:
    single = results.get("single_requests")
    if not single:
        return []
    bare = single.get("bare_flask_requests_per_s")
    return [
        (
            "single metered req/s kept up (bare gunicorn+Flask view, same run; ratio)",
            f"{single['requests_per_s']} ({bare}; {single.get('of_bare')})",
            ">= 2,000",
        ),
        (
            "the same bare view under uWSGI, same run (req/s)",
            single.get("bare_uwsgi_requests_per_s"),
            "",
        ),
    ]
