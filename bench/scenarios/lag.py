"""End-to-end lag at half the measured maximum rate: from the API's 202 for a batch to
its events' rows, with ``make api`` and ``make worker`` on their defaults.

A row's time is ``received_at``, which the worker sets as it starts the batch's
transaction; the commit follows within that transaction (tens of milliseconds:
the worker's task times). Paced senders keep the rate steady for ``SECONDS``.
"""

from __future__ import annotations

import json
import socket
import statistics
import threading
import time
from datetime import UTC, datetime
from typing import Any

from bench.load import BATCH, ingest_head, make_events, response_status
from bench.stack import Run, Stack, log, pg, recorded, wait_until

ORDER = 25  # after ingest, whose rate it halves
SECONDS = 30
SENDERS = 4


def _send_paced(port: int, bodies: list[tuple[int, bytes]], interval: float, acked: dict) -> None:
    head = ingest_head()
    buffer = bytearray()
    start = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        for n, (batch, body) in enumerate(bodies):
            delay = start + n * interval - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            sock.sendall(b"%s%d\r\n\r\n%s" % (head, len(body), body))
            if response_status(sock, buffer) != 202:
                raise RuntimeError("ingest refused a batch")
            acked[batch] = time.time()


def run(run: Run, results: dict[str, Any]) -> None:
    max_rate = results.get("ingest", {}).get("events_per_s") or 20_000
    rate = max_rate / 2
    batches = int(rate * SECONDS / BATCH)
    log(f"lag: {rate:,.0f} events/s (half of {max_rate:,}) for {SECONDS} s")
    stack = Stack(run, port=8712)
    stack.start_api()
    stack.start_worker()
    conn = pg(run.db_url)
    with conn.cursor() as cur:
        cur.execute("TRUNCATE usage_events, ingest_batches")
    time.sleep(3)  # let the worker connect
    now = datetime.now(UTC)
    bodies = []
    for batch in range(batches):
        events = make_events(BATCH, batch * BATCH, now)
        for i, e in enumerate(events):
            e["event_id"] = f"lag-{batch}-{i}"
        bodies.append((batch, json.dumps({"events": events}).encode()))
    acked: dict[int, float] = {}
    interval = SENDERS * BATCH / rate  # each sender's pace
    threads = [
        threading.Thread(target=_send_paced, args=(stack.port, bodies[n::SENDERS], interval, acked))
        for n in range(SENDERS)
    ]
    t0 = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    sent_s = time.perf_counter() - t0
    wait_until("events recorded", batches * BATCH, lambda: recorded(conn))
    with conn.cursor() as cur:
        cur.execute(
            "SELECT event_id, extract(epoch FROM received_at) FROM usage_events "
            "WHERE event_id LIKE 'lag-%'"
        )
        lags = [
            float(stored) - acked[int(event_id.split("-")[1])]
            for event_id, stored in cur.fetchall()
        ]
    stack.stop()
    conn.close()
    lags.sort()
    results["lag"] = {
        "events": len(lags),
        "rate_per_s": round(batches * BATCH / sent_s),
        "p50_s": round(statistics.median(lags), 3),
        "p99_s": round(lags[int(len(lags) * 0.99) - 1], 3),
        "max_s": round(lags[-1], 3),
    }
    log(f"lag: p50 {results['lag']['p50_s']} s, p99 {results['lag']['p99_s']} s")


def headline(results: dict[str, Any]) -> dict[str, Any]:
    lag = results.get("lag")
    return {"lag_p99_s": lag["p99_s"]} if lag else {}


def rows(results: dict[str, Any]) -> list[tuple[str, Any, str]]:
    lag = results.get("lag")
    if not lag:
        return []
    return [
        (
            f"end-to-end lag at {lag['rate_per_s']:,} events/s, 202 to row, p50 / p99 (s)",
            f"{lag['p50_s']} / {lag['p99_s']}",
            "p99 <= 1",
        )
    ]
