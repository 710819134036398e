"""``make bench``: every scenario of ``bench/scenarios`` against the real processes.

Runs on this machine against PostgreSQL and Redis (``BENCH_DATABASE_ADMIN_URL``,
``BENCH_REDIS_URL``), in a database it creates and drops. Sizes come from the
environment so a quick run is possible: ``BENCH_EVENTS`` (default 1,000,000),
``BENCH_SCALE_EVENTS`` (10,000,000; 0 skips the scenarios at scale),
``BENCH_CUSTOMERS`` (10,000); ``BENCH_SCENARIOS`` (names, comma-separated) runs
only those. Each run gets a fresh database and instance
directory, both removed at the end.

Prints a table; writes the figures as JSON with the machine's description, and
PNG plots beside them: in ``bench/results/`` for a full run (the default sizes;
it replaces the previous full run's files, which git keeps), in
``bench/results/quick/`` (not committed) otherwise. Every run appends its
headline figures to ``bench/history.jsonl``.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import redis

from bench.plots import figure
from bench.scenarios import scenarios
from bench.stack import (
    ADMIN_URL,
    CUSTOMERS,
    EVENTS,
    HISTORY,
    REDIS_URL,
    RESULTS,
    ROOT,
    SCALE_EVENTS,
    Run,
    Stack,
    history,
)

FULL_RUN = not any(
    name in os.environ
    for name in ("BENCH_EVENTS", "BENCH_SCALE_EVENTS", "BENCH_CUSTOMERS", "BENCH_SCENARIOS")
)
# BENCH_SCENARIOS=budgets,overhead runs only those (a quick run).
ONLY = {name for name in os.environ.get("BENCH_SCENARIOS", "").split(",") if name}


def describe() -> dict[str, Any]:
    from app.config import Settings

    settings = Settings.from_env()
    return {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        },
        "config": {
            "events": EVENTS,
            "scale_events": SCALE_EVENTS,
            "customers": CUSTOMERS,
            # The settings ingest runs with (defaults or the environment's).
            "meter_batch_size": settings.meter_batch_size,
            "meter_flush_ms": settings.meter_flush_ms,
            **{k: v for k, v in os.environ.items() if k.startswith(("METER_", "WEB_", "WORKER_"))},
        },
    }


def measure(results: dict[str, Any]) -> None:
    from tests.helpers import create_database, drop_database  # the same fresh-database helpers

    os.environ["TEST_DATABASE_ADMIN_URL"] = ADMIN_URL
    redis.Redis.from_url(REDIS_URL).flushdb()
    db_url = create_database()
    # A fresh instance (spools, broker folder) per run: a spool left by an earlier
    # run would be replayed into this run's database.
    scratch = tempfile.TemporaryDirectory(prefix="usage-billing-bench-")
    run = Run(db_url, Path(scratch.name))
    try:
        subprocess.run(  # migrate once, before any process of the stack starts
            [sys.executable, "-c", "from app import create_app; create_app()"],
            cwd=ROOT,
            env={**os.environ, "DATABASE_URL": db_url, "INSTANCE_DIR": scratch.name},
            check=True,
        )
        for scenario in scenarios():
            chosen = not ONLY or scenario.__name__.rsplit(".", 1)[1] in ONLY
            if chosen and getattr(scenario, "ENABLED", True):
                scenario.run(run, results)
    finally:
        for stack in Stack.started:
            stack.stop()
        drop_database(db_url)
        scratch.cleanup()


def headline(run: str, results: dict[str, Any]) -> dict[str, Any]:
    """One line of ``bench/history.jsonl``: when, where, and each scenario's headline."""
    line: dict[str, Any] = {
        "run": run,
        "when": results.get("when"),
        "machine": {k: results.get("machine", {}).get(k) for k in ("cpus", "python")},
        "events": results.get("config", {}).get("events"),
        "scale_events": results.get("config", {}).get("scale_events"),
    }
    for scenario in scenarios():
        if hasattr(scenario, "headline"):
            line.update(scenario.headline(results))
    return {k: v for k, v in line.items() if v is not None}


def print_table(results: dict[str, Any]) -> None:
    rows = [row for scenario in scenarios() for row in scenario.rows(results)]
    width = max(len(r[0]) for r in rows)
    print(f"\n{'measure'.ljust(width)}  {'value':>22}  target")
    for name, value, target in rows:
        shown = f"{value:,}" if isinstance(value, int) else str(value)
        print(f"{name.ljust(width)}  {shown:>22}  {target}")


def _is_full(line: dict[str, Any]) -> bool:
    return (line.get("events"), line.get("scale_events")) == (1_000_000, 10_000_000)


def draw_history(directory: Path) -> Path:
    """Ingest's ratio to the COPY ceiling, run after run, full runs apart from quick ones."""
    lines = history()
    path = directory / "history_ratio.png"
    title = "Ingest / COPY ceiling across bench/history.jsonl"
    with figure(path, title, "run (oldest first)", "ingest / COPY") as ax:
        for label, full in (("full runs", True), ("quick runs", False)):
            points = [
                (i, line["ratio_to_copy"])
                for i, line in enumerate(lines)
                if "ratio_to_copy" in line and _is_full(line) is full
            ]
            if points:
                ax.plot(*zip(*points, strict=True), "o", label=label, alpha=0.7)
        ax.axhline(0.30, color="red", linestyle=":", label="target 0.30")
    return path


def save(results: dict[str, Any]) -> list[Path]:
    directory = RESULTS if FULL_RUN else RESULTS / "quick"
    directory.mkdir(parents=True, exist_ok=True)
    if FULL_RUN:  # the latest full run replaces the previous one; git keeps it
        for old in directory.glob("*.json"):
            old.unlink()
    path = directory / f"{datetime.now(UTC):%Y%m%dT%H%M%SZ}.json"
    path.write_text(json.dumps(results, indent=2) + "\n")
    with HISTORY.open("a") as appended:
        appended.write(json.dumps(headline(path.stem, results)) + "\n")
    pictures = [p for s in scenarios() if hasattr(s, "draw") for p in s.draw(results, directory)]
    return [path, *pictures, draw_history(directory)]


def main() -> int:
    results = describe()
    measure(results)
    written = save(results)
    print_table(results)
    print("\nwritten: " + ", ".join(str(p.relative_to(ROOT)) for p in written))
    return 0


if __name__ == "__main__":
    sys.exit(main())
