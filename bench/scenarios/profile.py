"""Where the per-event CPU goes: py-spy of the API's and the worker's processes under
the bench's load, and PostgreSQL's own view (``pg_stat_statements``, WAL per event,
``EXPLAIN (ANALYZE, BUFFERS, WAL)`` of a batch's statements).

Run only when asked (``BENCH_SCENARIOS=profile``): a sampler and the statement
statistics cost CPU themselves, so their figures explain the other scenarios'
and are not one of them. The scenario runs on a PostgreSQL cluster of its own
(``initdb``, as the fault tests start one) with ``pg_stat_statements`` loaded,
which the machine's shared server is not and may not be restarted to load.

Each process's samples are attributed to the innermost frame of a known owner
(our modules by name, a library by its package), and turned into milliseconds
per 1,000 events with the CPU the same process used in the same phase.
"""

from __future__ import annotations

import io
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.load import BATCH, execute_request, make_events, one_request, post_batches
from bench.stack import (
    RESULTS,
    ROOT,
    CpuMeter,
    Run,
    Stack,
    cpu_seconds,
    log,
    pg,
    process_tree,
    recorded,
    wait_until,
)

ORDER = 90
ENABLED = "profile" in os.environ.get("BENCH_SCENARIOS", "").split(",")
EVENTS = int(os.environ.get("BENCH_PROFILE_EVENTS", "300000"))
SINGLE_SECONDS = 15
CLIENTS = 8
RATE = 250  # samples a second per process: py-spy's own cost stays a few per cent
TOP = 12
# The innermost frame whose file is under one of these names owns the sample.
_FRAME = re.compile(r"\((?P<file>[^:()]+):\d+\)$")
_OURS = re.compile(r"/(?P<module>(?:app|tasks)/[\w/]+)\.py$")
_LIBRARY = re.compile(r"/site-packages/(?P<package>[\w]+)")
_STDLIB = re.compile(r"/lib/python3\.\d+/(?P<module>[\w]+)")


def _private_postgres() -> Any:
    from tests.processes import PrivatePostgres

    cluster = PrivatePostgres().init()
    with (cluster.datadir / "postgresql.conf").open("a") as conf:
        conf.write(
            "shared_preload_libraries = 'pg_stat_statements'\n"
            "pg_stat_statements.track = all\ntrack_io_timing = on\n"
        )
    cluster.start()
    return cluster


def _migrate(url: str, instance: Path) -> None:
    subprocess.run(
        [sys.executable, "-c", "from app import create_app; create_app()"],
        cwd=ROOT,
        env={**os.environ, "DATABASE_URL": url, "INSTANCE_DIR": str(instance)},
        check=True,
    )


def _python_children(stack: Stack, role: str) -> list[int]:
    """The processes that do the role's work: gunicorn's workers, Celery's pool."""
    tree = process_tree(stack.procs[role].pid)
    # make, then the server's main process; the work happens in its children.
    return tree[2:] or tree[1:]


class Spy:
    """py-spy recording each of these processes into ``directory`` until stopped."""

    def __init__(self, pids: dict[str, list[int]], directory: Path) -> None:
        spy = str(Path(sys.executable).with_name("py-spy"))
        self.files: dict[str, list[Path]] = {}
        self.procs = []
        for role, each in pids.items():
            for pid in each:
                out = directory / f"{role}-{pid}.txt"
                self.files.setdefault(role, []).append(out)
                self.procs.append(
                    subprocess.Popen(
                        [spy, "record", "--pid", str(pid), "--rate", str(RATE), "--nonblocking"]
                        # --gil: a thread waiting on a socket or a lock is not CPU
                        + ["--gil", "--full-filenames", "--format", "raw", "-o", str(out)],
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL,
                    )
                )
        time.sleep(1)  # attached

    def stop(self) -> dict[str, Counter[str]]:
        for proc in self.procs:
            proc.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
        for proc in self.procs:
            proc.wait(timeout=60)
        return {role: _stacks(files) for role, files in self.files.items()}


def _stacks(files: list[Path]) -> Counter[str]:
    """Collapsed stacks (``frame;frame;… count``) summed over a role's processes."""
    counted: Counter[str] = Counter()
    for file in files:
        if not file.exists():
            continue
        for line in file.read_text().splitlines():
            stack, _, count = line.rpartition(" ")
            if stack:
                counted[stack] += int(count)
    return counted


def owner(frame: str) -> str | None:
    """Who a frame belongs to: ``app/ingest/ledger``, ``sqlalchemy``, ``json``; None if unknown."""
    found = _FRAME.search(frame)
    if found is None:
        return None
    file = found["file"]
    for pattern, group in ((_OURS, "module"), (_LIBRARY, "package"), (_STDLIB, "module")):
        if match := pattern.search(file):
            return match[group]
    return None


def breakdown(stacks: Counter[str], cpu_ms_per_1000: float) -> dict[str, Any]:
    """Self time by owner (the innermost owned frame) and inclusive time of our functions,
    each in ms per 1,000 events: the process's CPU split as its samples split."""
    total = sum(stacks.values()) or 1
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    for stack, count in stacks.items():
        frames = stack.split(";")
        own[next((o for f in reversed(frames) if (o := owner(f))), "other")] += count
        ours = {
            f"{o}:{f.split(' (', 1)[0]}"
            for f in frames
            if (o := owner(f)) and o.startswith(("app/", "tasks/"))
        }
        for name in ours:
            inclusive[name] += count

    def scaled(counter: Counter[str]) -> list[list[Any]]:
        return [
            [name, round(count / total * cpu_ms_per_1000, 2), round(count / total * 100, 1)]
            for name, count in counter.most_common(TOP)
        ]

    return {"samples": total, "self": scaled(own), "inclusive": scaled(inclusive)}


_STATEMENTS = """
    SELECT left(regexp_replace(query, '\\s+', ' ', 'g'), 160), calls, rows,
           total_exec_time, shared_blks_hit + shared_blks_read, shared_blks_dirtied,
           wal_records, wal_fpi, wal_bytes, jit_functions,
           jit_generation_time + jit_inlining_time + jit_optimization_time + jit_emission_time
    FROM pg_stat_statements
    WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
    ORDER BY total_exec_time DESC LIMIT %s
"""


def _statements(conn: Any, events: int) -> list[dict[str, Any]]:
    per = 1000 / events
    with conn.cursor() as cur:
        cur.execute(_STATEMENTS, (TOP,))
        return [
            {
                "query": query,
                "calls": calls,
                "rows": rows,
                "ms_per_1000": round(float(ms) * per, 2),
                "blocks_per_1000": round(blocks * per),
                "dirtied_per_1000": round(dirtied * per),
                "wal_records_per_1000": round(records * per),
                "wal_fpi_per_1000": round(fpi * per),
                "wal_kb_per_1000": round(float(wal) * per / 1024, 1),
                "jit_functions": jit,
                "jit_ms_per_1000": round(float(jit_ms) * per, 2),
            }
            for query, calls, rows, ms, blocks, dirtied, records, fpi, wal, jit, jit_ms in cur.fetchall()
        ]


def _wal(conn: Any) -> dict[str, float]:
    """The cluster's WAL so far, and the sessions its database has seen (a connection
    opened per call would show here, and costs the server a process each)."""
    with conn.cursor() as cur:
        cur.execute(
            "SELECT wal_records, wal_fpi, wal_bytes, sessions FROM pg_stat_wal,"
            " pg_stat_database WHERE datname = current_database()"
        )
        records, fpi, wal, sessions = cur.fetchone()
    return {"records": records, "fpi": fpi, "bytes": float(wal), "sessions": sessions}


class BackendCpu:
    """PostgreSQL's CPU over a phase split by who asked: each client backend by its
    process's role (``PGAPPNAME``, which libpq sends as ``application_name``), the
    server's own processes by type (WAL writer, checkpointer, autovacuum). A backend
    that exited during the phase (an autovacuum worker) is not counted."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn
        self.start = self._now()

    def _now(self) -> dict[int, tuple[str, float]]:
        with self.conn.cursor() as cur:
            cur.execute(
                "SELECT pid, coalesce(nullif(application_name, ''), backend_type)"
                " FROM pg_stat_activity WHERE pid <> pg_backend_pid()"
            )
            return {pid: (label, cpu_seconds([pid])) for pid, label in cur.fetchall()}

    def per_1000_events(self, events: int) -> dict[str, float]:
        split: Counter[str] = Counter()
        for pid, (label, seconds) in self._now().items():
            split[label] += seconds - self.start.get(pid, (label, 0.0))[1]
        return {label: round(s / events * 1e6, 1) for label, s in split.most_common() if s > 0}


def _reset(conn: Any) -> None:
    with conn.cursor() as cur:
        cur.execute("CHECKPOINT")
        cur.execute("SELECT pg_stat_statements_reset(), pg_stat_reset_shared('wal')")


def _start(stack: Stack) -> None:
    """API and worker as ``make`` starts them, each naming itself to PostgreSQL."""
    stack.env["PGAPPNAME"] = "api"
    stack.start_api()
    stack.env["PGAPPNAME"] = "worker"
    stack.start_worker()


def _batch_ingest(run: Run, conn: Any, directory: Path) -> dict[str, Any]:
    stack = Stack(run, port=8791)
    _start(stack)
    now = datetime.now(UTC)
    bodies = [
        json.dumps({"events": make_events(BATCH, i, now)}).encode() for i in range(0, EVENTS, BATCH)
    ]
    post_batches(stack.port, bodies[:50])  # warm: imports, pools, partitions
    warm = 50 * BATCH
    wait_until("warm-up recorded", warm, lambda: recorded(conn))
    _reset(conn)
    spy = Spy({r: _python_children(stack, r) for r in ("api", "worker")}, directory)
    cpu, backends = CpuMeter(stack), BackendCpu(conn)
    wal_before = _wal(conn)
    post_batches(stack.port, bodies[50:])
    wait_until("events recorded", EVENTS, lambda: recorded(conn))
    events = EVENTS - warm
    per_1000 = cpu.per_1000_events(events)
    postgres = backends.per_1000_events(events)
    wal = {k: v - wal_before[k] for k, v in _wal(conn).items()}
    stacks = spy.stop()
    stack.stop()
    return {
        "events": events,
        "cpu_ms_per_1000_events": per_1000,
        "api": breakdown(stacks["api"], per_1000["api"]),
        "worker": breakdown(stacks["worker"], per_1000["worker"]),
        "postgres_by_backend": postgres,
        "statements": _statements(conn, events),
        "wal_per_1000_events": {
            "records": round(wal["records"] * 1000 / events),
            "full_page_images": round(wal["fpi"] * 1000 / events),
            "kb": round(wal["bytes"] * 1000 / events / 1024, 1),
        },
        "sessions_opened": wal["sessions"],
    }


def _single_requests(run: Run, conn: Any, directory: Path) -> dict[str, Any]:
    """The metered request path: ``/v1/execute`` through the pricing middleware."""
    stack = Stack(run, middleware=True, port=8792)
    _start(stack)
    request = execute_request("bench-profile-key")
    before = recorded(conn)
    for _ in range(200):
        one_request(stack.port, request)
    # Recorded: the worker's pool is up (sampled before, it showed only imports).
    wait_until("warm-up recorded", before + 200, lambda: recorded(conn))
    _reset(conn)
    spy = Spy({r: _python_children(stack, r) for r in ("api", "worker")}, directory)
    cpu, backends = CpuMeter(stack), BackendCpu(conn)
    stop = time.monotonic() + SINGLE_SECONDS

    def client(_: int) -> int:
        served = 0
        while time.monotonic() < stop:
            served += one_request(stack.port, request) == 200
        return served

    with ThreadPoolExecutor(CLIENTS) as pool:
        sent = sum(pool.map(client, range(CLIENTS)))
    time.sleep(2)  # the last events recorded
    per_1000 = cpu.per_1000_events(sent)
    postgres = backends.per_1000_events(sent)
    stacks = spy.stop()
    stack.stop()
    return {
        "requests": sent,
        "cpu_ms_per_1000_requests": per_1000,
        "api": breakdown(stacks["api"], per_1000["api"]),
        "worker": breakdown(stacks["worker"], per_1000["worker"]),
        "postgres_by_backend": postgres,
        "statements": _statements(conn, sent),
    }


def _explain(run: Run) -> dict[str, str]:
    """EXPLAIN (ANALYZE, BUFFERS, WAL) of one all-new batch's statements, rolled back."""
    from app.config import Settings
    from app.extensions import db
    from app.ingest.ledger import _copy_text, _postgresql_sql, staging_cursor
    from app.ingest.partitions import require_partitions
    from app.ingest.recording import _row
    from app.ingest.validation import EventLimits, validate_event
    from app.pricing.book import price_book
    from bench.stack import in_process_app

    app = in_process_app(run)
    now = datetime.now(UTC)
    plans: dict[str, str] = {}
    with app.app_context():
        limits = EventLimits.from_settings(Settings())  # the defaults the stack runs with
        events = [validate_event(e, now, limits) for e in make_events(BATCH, 10**8, now)]
        rows = [_row(event, price_book.get(), now) for event in events]
        sql = _postgresql_sql()
        connection = db.session.connection()
        require_partitions(connection, [row.created_at for row in rows])
        cursor = staging_cursor(connection)  # the statements below are prepared on it
        data = _copy_text(rows)
        cursor.copy_expert(sql.copy, io.StringIO(data))
        # The API's duplicate check of the same hundred ids, as psycopg2 sends it.
        check = cursor.mogrify(
            "SELECT event_id FROM usage_event_ids WHERE event_id = ANY(string_to_array(%s, ','))",
            (",".join(row.event_id for row in rows),),
        ).decode()
        statements = {"duplicate_check": check, "claim": sql.claim.text, "append": sql.append.text}
        daily, hourly = sql.roll_up.text.split(";")
        statements.update(daily_rollup=daily, hourly_rollup=hourly)
        for name, statement in statements.items():
            cursor.execute(f"EXPLAIN (ANALYZE, BUFFERS, WAL, COSTS OFF) {statement}")
            plans[name] = "\n".join(line for (line,) in cursor.fetchall())
        db.session.rollback()
    return plans


_CHECK = "SELECT event_id FROM ids_copy WHERE event_id = ANY(string_to_array(%s, ','))"
_SIZES = (10_000, 30_000, 100_000, 300_000)  # the id table as a fresh database grows


def _check_ab(conn: Any, rounds: int = 10, calls: int = 20) -> list[dict[str, Any]]:
    """The duplicate check, sequential scans allowed (PostgreSQL's default) against
    not (``quick_read()``'s engine), alternating, on copies of the id table's first
    ids as ingest left them, never analyzed, as every table is in its first minute."""
    found = []
    with conn.cursor() as cur:
        for size in _SIZES:
            cur.execute("CREATE TEMP TABLE ids_copy (LIKE usage_event_ids INCLUDING ALL)")
            cur.execute("INSERT INTO ids_copy SELECT * FROM usage_event_ids LIMIT %s", (size,))
            spent: dict[str, list[float]] = {"on": [], "off": []}
            for n in range(rounds * calls):
                mode = ("on", "off")[n // calls % 2]
                cur.execute(f"SET enable_seqscan = {mode}")
                started = time.perf_counter()
                cur.execute(_CHECK, (",".join(f"new-{n}-{i}" for i in range(BATCH)),))
                cur.fetchall()
                spent[mode].append(time.perf_counter() - started)
            cur.execute("RESET enable_seqscan")
            cur.execute("DROP TABLE ids_copy")
            ms = {mode: round(sum(t) / len(t) * 1000, 3) for mode, t in spent.items()}
            found.append(
                {"ids_stored": size, "ms_seqscan_on": ms["on"], "ms_seqscan_off": ms["off"]}
            )
    return found


def run(run: Run, results: dict[str, Any]) -> None:
    log(f"profile: py-spy and pg_stat_statements over {EVENTS:,} events, on a private cluster")
    cluster = _private_postgres()
    directory = RESULTS / "quick" / "profile"  # the raw stacks, kept to read (not committed)
    directory.mkdir(parents=True, exist_ok=True)
    for old in directory.glob("*.txt"):
        old.unlink()
    try:
        private = Run(cluster.url, run.instance)
        _migrate(private.db_url, run.instance)
        conn = pg(private.db_url)
        with conn.cursor() as cur:
            cur.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        results["profile"] = {
            "batch_ingest": _batch_ingest(private, conn, directory),
            "explain": _explain(private),
            "duplicate_check_ab": _check_ab(conn),
        }
        log("profile: single metered requests")
        results["profile"]["single_requests"] = _single_requests(private, conn, directory)
        conn.close()
    finally:
        for stack in Stack.started:
            stack.stop()
        cluster.stop()


def rows(results: dict[str, Any]) -> list[tuple[str, Any, str]]:
    profile = results.get("profile")
    if not profile:
        return []
    batch, single = profile["batch_ingest"], profile["single_requests"]
    out: list[tuple[str, Any, str]] = []
    for phase, data, unit in (("batch", batch, "events"), ("single", single, "requests")):
        for role in ("api", "worker"):
            top = ", ".join(f"{name} {ms}" for name, ms, _ in data[role]["self"][:5])
            out.append((f"profile {phase} {role}, ms/1000 {unit}, self", top, ""))
    for ab in profile["duplicate_check_ab"]:
        name = f"duplicate check, {BATCH} ids among {ab['ids_stored']:,}, seq scan on / off (ms)"
        out.append((name, f"{ab['ms_seqscan_on']} / {ab['ms_seqscan_off']}", ""))
    wal = " / ".join(map(str, batch["wal_per_1000_events"].values()))
    out.append(("profile WAL per 1000 events (records / FPI / KB)", wal, ""))
    return out


def headline(results: dict[str, Any]) -> dict[str, Any]:
    profile = results.get("profile")
    if not profile:
        return {}
    batch = profile["batch_ingest"]
    return {
        "profile_batch_cpu_ms_per_1000": batch["cpu_ms_per_1000_events"],
        "profile_wal_kb_per_1000": batch["wal_per_1000_events"]["kb"],
    }
