"""The pages' data at scale: over the rollups ``reads`` loaded (``SCALE_EVENTS`` events,
``CUSTOMERS`` customers), each data call the customer's page makes, for customers
signed in through the form, and the operators' overview; then the raw-event export
of every customer over ten days, its rate and the process's memory meanwhile, beside
the rate of its own ``COPY`` alone, run before and after it in the same run (the
database's speed of the moment, which the export is held to half of)."""

from __future__ import annotations

import random
import statistics
import threading
import time
from collections import defaultdict
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from app.analytics.export import ExportRequest, copy_statement
from app.dashboard.overview import refresh_top_customers
from app.extensions import db
from app.registry import services
from bench.plots import figure
from bench.stack import ADMIN_TOKEN, CUSTOMERS, SCALE_EVENTS, Run, in_process_app, log

ORDER = 57  # after reads (which loads the rollups) and plans; before cleanup
ENABLED = SCALE_EVENTS > 0
SIGNED_IN = 100  # customers whose page is loaded
ADMIN_LOADS = 50
EXPORT_DAYS = 10


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _sign_in(client: Any, path: str, field: str, secret: str) -> None:
    html = client.get(path).get_data(as_text=True)
    token = html.split('name="csrf_token" value="', 1)[1].split('"', 1)[0]
    form = {field: secret, "csrf_token": token, "operator": "bench"}  # operator: /admin's
    resp = client.post(path, data=form)
    assert resp.status_code == 302, resp.status_code


def _page_calls(today: str, start: str) -> dict[str, str]:
    """The data calls ``dashboard.js`` makes for a 30-day page."""
    between = f"start_date={start}&end_date={today}"
    return {
        "usage by day and model": f"/dashboard/data/usage?{between}&granularity=day&group_by=model",
        "breakdown (total)": f"/dashboard/data/usage?{between}&granularity=total"
        "&group_by=provider,model",
        "task types (the filter's options)": f"/dashboard/data/usage?{between}"
        "&granularity=total&group_by=task_type",
        "forecast": "/dashboard/data/forecast",
        "performance": f"/dashboard/data/performance?{between}",
        "latest calls": f"/dashboard/data/calls?{between}&limit=25",
        "a call by execution id (none such: every event of the range looked at)": (
            f"/dashboard/data/calls?{between}&execution_id=no-such-call"
        ),
        "recommendations": "/dashboard/data/recommendations?days=30",
        "alerts": "/dashboard/data/alerts",
        "credits": "/dashboard/data/credits",
    }


def _export(app: Any, start: str, end: str) -> dict[str, Any]:
    client = app.test_client()
    rss: list[float] = [_rss_mb()]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.2):
            rss.append(_rss_mb())

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    t = time.perf_counter()
    resp = client.get(
        f"/v1/billing/usage/export?start_date={start}&end_date={end}&format=csv",
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
        buffered=False,
    )
    lines = size = 0
    warm = 0.0  # after the first 100,000 rows: what the stream holds once it runs
    for chunk in resp.response:
        data = chunk if isinstance(chunk, bytes) else chunk.encode()
        lines += data.count(b"\n")
        size += len(data)
        if not warm and lines > 100_000:
            warm = _rss_mb()
    seconds = time.perf_counter() - t
    done.set()
    sampler.join()
    rows = lines - 1  # the header
    return {
        "rows": rows,
        "mb": round(size / 2**20, 1),
        "seconds": round(seconds, 2),
        "rows_per_s": round(rows / seconds),
        "rss_start_mb": round(rss[0], 1),
        "rss_at_100k_rows_mb": round(warm, 1),
        "rss_peak_mb": round(max(rss), 1),
    }


def _copy_alone(app: Any, start: str, end: str) -> dict[str, Any]:
    """The export's ``COPY … TO STDOUT`` alone, its rows counted and dropped."""

    class Count:
        lines = 0

        def write(self, data: bytes) -> None:
            self.lines += data.count(b"\n")

    wanted = ExportRequest(date.fromisoformat(start), date.fromisoformat(end), "csv", None)
    with app.app_context():
        raw = db.engine.raw_connection()
        try:
            cursor = raw.cursor()
            sink = Count()
            t = time.perf_counter()
            cursor.copy_expert(copy_statement(wanted, cursor, db.engine.dialect), sink)
            seconds = time.perf_counter() - t
            raw.rollback()
        finally:
            raw.close()
    return {
        "rows": sink.lines,
        "seconds": round(seconds, 2),
        "rows_per_s": round(sink.lines / seconds),
    }


def run(run: Run, results: dict[str, Any]) -> None:
    app = in_process_app(run, ADMIN_TOKEN=ADMIN_TOKEN)

    today = datetime.now(UTC).date()
    calls = _page_calls(today.isoformat(), (today - timedelta(days=29)).isoformat())
    latency: dict[str, list[float]] = defaultdict(list)
    for n in random.Random(3).sample(range(CUSTOMERS), SIGNED_IN):
        client = app.test_client()
        _sign_in(client, "/dashboard/sign-in", "api_key", f"bench-key-{n}")
        for name, path in calls.items():
            t = time.perf_counter()
            resp = client.get(path)
            latency[name].append(time.perf_counter() - t)
            assert resp.status_code == 200, (path, resp.get_json())
    with app.app_context():  # what Beat does every five minutes, timed
        t = time.perf_counter()
        refresh_top_customers(services(app).redis, datetime.now(UTC))
        snapshot_s = round(time.perf_counter() - t, 3)
    admin = app.test_client()
    _sign_in(admin, "/admin/sign-in", "token", ADMIN_TOKEN)
    for _ in range(ADMIN_LOADS):
        t = time.perf_counter()
        assert admin.get("/admin/data").status_code == 200
        latency["admin overview"].append(time.perf_counter() - t)
    cold_admin_ms = round(latency["admin overview"][0] * 1000, 1)
    figures = {
        name: {
            "p50_ms": round(statistics.median(lat) * 1000, 1),
            "p99_ms": round(statistics.quantiles(lat, n=100, method="inclusive")[98] * 1000, 1),
            "max_ms": round(max(lat) * 1000, 1),
        }
        for name, lat in latency.items()
    }
    log("dashboard data p99 (ms): " + ", ".join(f"{k} {v['p99_ms']}" for k, v in figures.items()))
    between = (today - timedelta(days=EXPORT_DAYS)).isoformat(), today.isoformat()
    copies = [_copy_alone(app, *between)]
    export = _export(app, *between)
    copies.append(_copy_alone(app, *between))
    export["copy_rows_per_s"] = max(copy["rows_per_s"] for copy in copies)
    export["of_copy"] = round(export["rows_per_s"] / export["copy_rows_per_s"], 2)
    log(f"export: {export['rows']:,} rows in {export['seconds']} s, RSS {export['rss_peak_mb']} MB")
    results["dashboard"] = {
        "customers_signed_in": SIGNED_IN,
        "calls": figures,
        "admin_first_load_ms": cold_admin_ms,
        "top_customers_snapshot_s": snapshot_s,
        "export": export,
    }


def headline(results: dict[str, Any]) -> dict[str, Any]:
    board = results.get("dashboard")
    if not board:
        return {}
    return {
        "dashboard_worst_p99_ms": max(c["p99_ms"] for c in board["calls"].values()),
        "export_rows_per_s": board["export"]["rows_per_s"],
        "export_copy_rows_per_s": board["export"].get("copy_rows_per_s"),
    }


def rows(results: dict[str, Any]) -> list[tuple[str, Any, str]]:
    board = results.get("dashboard")
    if not board:
        return []
    out = [
        (f"dashboard: {name} p50 / p99 (ms)", f"{c['p50_ms']} / {c['p99_ms']}", "p99 <= 100")
        for name, c in board["calls"].items()
    ]
    out.append(
        (
            "top customers of the month, Beat's snapshot every 5 min (s)",
            board["top_customers_snapshot_s"],
            "",
        )
    )
    export = board["export"]
    out.append(
        (
            f"export of {export['rows']:,} events, rows/s (its COPY alone; ratio)",
            f"{export['rows_per_s']:,} ({export.get('copy_rows_per_s', 0):,}; "
            f"{export.get('of_copy')})",
            ">= 150,000, >= 0.5 of COPY",
        )
    )
    out.append(
        (
            "export: RSS MB at start / after 100k rows / peak",
            f"{export['rss_start_mb']} / {export['rss_at_100k_rows_mb']} / {export['rss_peak_mb']}",
            "flat",
        )
    )
    return out


def draw(results: dict[str, Any], directory: Path) -> list[Path]:
    board = results.get("dashboard")
    if not board:
        return []
    path = directory / "dashboard_p99.png"
    title = f"Dashboard data calls at {SCALE_EVENTS:,} events, {CUSTOMERS:,} customers"
    with figure(path, title, "p99 latency (ms)", "") as ax:
        names = list(board["calls"])
        ax.barh(names, [board["calls"][n]["p99_ms"] for n in names], label="p99")
        ax.axvline(100, color="red", linestyle="--", label="target 100 ms")
    return [path]
