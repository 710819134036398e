"""What every scenario shares: the sizes, the stack as the README starts it, and its meters.

A scenario starts ``make api`` and ``make worker`` through ``Stack`` (default
settings, the same commands docker-compose.yml runs) against the run's fresh
database, measures, and stops them; ``Stack.started`` lets the driver stop
whatever a failed scenario left running.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg2

from app.progress import progress_bar

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
HISTORY = ROOT / "bench" / "history.jsonl"
ADMIN_URL = os.environ.get(
    "BENCH_DATABASE_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/14")
EVENTS = int(os.environ.get("BENCH_EVENTS", "1000000"))
SCALE_EVENTS = int(os.environ.get("BENCH_SCALE_EVENTS", "10000000"))
CUSTOMERS = int(os.environ.get("BENCH_CUSTOMERS", "10000"))
SERVICE_TOKEN = "bench-" + uuid.uuid4().hex
ADMIN_TOKEN = "bench-admin-" + uuid.uuid4().hex


@dataclass(frozen=True)
class Run:
    """Where one ``make bench`` run works: its database and its instance directory."""

    db_url: str
    instance: Path


def log(message: str) -> None:
    print(f"[bench {datetime.now():%H:%M:%S}] {message}", flush=True)


def pg(url: str, autocommit: bool = True) -> Any:
    conn = psycopg2.connect(url.replace("postgresql+psycopg2://", "postgresql://"))
    conn.autocommit = autocommit
    return conn


def recorded(conn: Any, since: datetime | None = None) -> int:
    """Events the workers have recorded, summed from their batch receipts.

    Cheap enough to poll: ``count(*)`` of ``usage_events`` scans the table (seconds
    at 10M rows) and would take the CPU it is meant to measure.
    """
    with conn.cursor() as cur:
        cur.execute(
            "SELECT coalesce(sum(events), 0) FROM ingest_batches WHERE recorded_at >= %s",
            (since or datetime(2000, 1, 1, tzinfo=UTC),),
        )
        return cur.fetchone()[0]


def wait_until(label: str, total: int, done: Callable[[], int], limit_s: float = 3600) -> None:
    """Poll ``done()`` until it reaches ``total``, with a progress bar on a terminal."""
    started = time.monotonic()
    with progress_bar(label) as progress:
        while (count := done()) < total:
            progress(count, total)
            if time.monotonic() - started > limit_s:
                raise RuntimeError(f"{label}: {count:,} of {total:,} after {limit_s:.0f} s")
            time.sleep(0.2)
        progress(total, total)


def checkpoint(conn: Any) -> None:
    """Start a measurement with no checkpoint due from the writes before it, and
    no dirty page of the operating system's left to write back."""
    with conn.cursor() as cur:
        cur.execute("CHECKPOINT")
    os.sync()


def process_tree(pid: int) -> list[int]:
    """A process and all its descendants."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        children = subprocess.run(["pgrep", "-P", str(current)], capture_output=True, text=True)
        todo.extend(int(p) for p in children.stdout.split())
    return found


def named(name: str) -> list[int]:
    found = subprocess.run(["pgrep", "-x", name], capture_output=True, text=True)
    return [int(p) for p in found.stdout.split()]


def rss_mb(pids: list[int]) -> float:
    """Resident memory of these processes together, in MiB."""
    total = 0
    for each in pids:
        try:
            for line in Path(f"/proc/{each}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except FileNotFoundError:
            pass
    return round(total / 1024, 1)


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU the live processes have used so far."""
    ticks = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            continue
        ticks += int(fields[11]) + int(fields[12])  # utime, stime
    return ticks / os.sysconf("SC_CLK_TCK")


def history() -> list[dict[str, Any]]:
    """Every run's headline figures, oldest first (``bench/history.jsonl``)."""
    return [json.loads(line) for line in HISTORY.read_text().splitlines() if line.strip()]


def wait_until_serving(port: int, limit_s: float = 60) -> None:
    """Until the server on ``port`` answers ``GET /healthz`` with a 200."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/healthz")
            if conn.getresponse().status == 200:
                return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"nothing served on :{port}")


class Stack:
    """``make api`` + ``make worker`` against the run's database."""

    started: list[Stack] = []

    def __init__(self, run: Run, middleware: bool = False, port: int = 0, **settings: str) -> None:
        self.env = {
            **os.environ,
            "DATABASE_URL": run.db_url,
            "REDIS_URL": REDIS_URL,
            "SERVICE_TOKEN": SERVICE_TOKEN,
            "INSTANCE_DIR": str(run.instance),
            "METER_SPOOL_DIR": str(run.instance / f"spool-{port}"),
            "ENABLE_PRICING_MIDDLEWARE": "true" if middleware else "false",
            "DEMO_EXECUTE_ENDPOINT": "true",
            "MAX_EVENT_AGE_DAYS": "35",
            "ADMIN_TOKEN": ADMIN_TOKEN,
            **settings,  # what a scenario compares (ENFORCE_BUDGETS on and off)
        }
        self.port = port
        self.instance = run.instance
        self.procs: dict[str, subprocess.Popen] = {}
        Stack.started.append(self)  # the driver stops every one, whatever fails

    def _make(self, target: str, env: dict[str, str]) -> subprocess.Popen:
        """``make <target>``: the command the README and docker-compose.yml run."""
        with open(self.instance / f"{target}-{self.port}.log", "ab") as log_file:
            return subprocess.Popen(
                ["make", "--no-print-directory", "-s", target, f"PY={sys.executable}"],
                cwd=ROOT,
                env={**self.env, **env},
                start_new_session=True,
                stdout=log_file,
                stderr=log_file,
            )

    def start_api(self, workers: int = 2) -> None:
        self.procs["api"] = self._make(
            "api", {"PORT": str(self.port), "WEB_CONCURRENCY": str(workers)}
        )
        wait_until_serving(self.port)

    def start_worker(self, concurrency: int = 2) -> None:
        self.procs["worker"] = self._make(
            "worker", {"WORKER_CONCURRENCY": str(concurrency), "AUTO_MIGRATE": "false"}
        )

    def stop(self) -> None:
        for proc in self.procs.values():
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        for proc in self.procs.values():
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
        self.procs.clear()


class CpuMeter:
    """CPU seconds per role (API, worker, PostgreSQL, Redis, load generator) over a phase."""

    def __init__(self, stack: Stack) -> None:
        self.roles = {
            "api": lambda: process_tree(stack.procs["api"].pid),
            "worker": lambda: process_tree(stack.procs["worker"].pid),
            "postgres": lambda: named("postgres"),
            "redis": lambda: named("redis-server"),
        }
        self.start = self._now()

    def _now(self) -> dict[str, float]:
        now = {role: cpu_seconds(pids()) for role, pids in self.roles.items()}
        now["load_generator"] = time.process_time()
        return now

    def per_1000_events(self, events: int) -> dict[str, float]:
        end = self._now()
        return {
            role: round((end[role] - self.start[role]) / events * 1000 * 1000, 1) for role in end
        }


class Sampler:
    """Once a second through a sustained run: seconds since start, events recorded,
    API and worker RSS. The ingest rate over the run and the memory figures come
    from the same samples.

    Memory counts from after a tenth of the events is stored (imports, price
    book and connection pools are warm by then). Growth compares the highest
    sample of the second half with the highest of the first half: a leak raises
    the second. Single samples are not a measure: the API's RSS rises once by
    20-150 MB at some point early in a run, then stays flat
    (docs/performance.md). Every sample is recorded; the idle figure too.
    """

    def __init__(self, stack: Stack, conn: Any, events: int) -> None:
        # Each process tree found once: a pgrep per process every second took
        # CPU from the stack being measured.
        self.pids = {role: process_tree(stack.procs[role].pid) for role in ("api", "worker")}
        self.idle = self._rss()
        self.samples: list[dict[str, float]] = []
        self._conn, self._warm_after = conn, events // 10
        self._started = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _rss(self) -> dict[str, float]:
        return {role: rss_mb(pids) for role, pids in self.pids.items()}

    def _sample(self, conn: Any) -> dict[str, float]:
        return {
            "s": round(time.monotonic() - self._started, 2),
            "recorded": recorded(conn),
            **self._rss(),
        }

    def _run(self) -> None:
        conn = pg(self._conn.dsn)
        while not self._stop.wait(1.0):
            self.samples.append(self._sample(conn))
        conn.close()

    def stop(self) -> dict[str, Any]:
        self._stop.set()
        self._thread.join()
        self.samples.append(self._sample(self._conn))
        counted = [m for m in self.samples if m["recorded"] >= self._warm_after]
        halves = counted[: len(counted) // 2] or counted, counted[len(counted) // 2 :]
        first, second = ({k: max(m[k] for m in half) for k in self.idle} for half in halves)
        return {
            "idle": self.idle,
            "first_half_peak": first,
            "second_half_peak": second,
            "growth_pct": {k: round((second[k] - first[k]) / first[k] * 100, 1) for k in first},
            "samples": self.samples,
        }


def in_process_app(run: Run, **environment: str) -> Any:
    """The app in this process on the run's database, as the scale scenarios read it
    (migrated already), with ``environment``'s settings on top of the defaults."""
    os.environ.update(
        DATABASE_URL=run.db_url,
        REDIS_URL=REDIS_URL,
        INSTANCE_DIR=str(run.instance),
        AUTO_MIGRATE="false",
        **environment,
    )
    from app import create_app

    return create_app()
