"""PostgreSQL's CPU per 1,000 events for a batch's writes, with the statements
prepared once per connection (as shipped) against parsed and planned for every
batch (as before): the same events in alternating rounds, in one run, in batches of
one request's size (100) and of the outbox's under load (``METER_BATCH_SIZE``, what
the stack's workers record), on a database of the scenario's own (its events would
otherwise meet ingest's ids).

The backend's CPU is read from ``/proc`` (PostgreSQL runs on this machine), so it
counts only what the server spent: the worker's Python is the same in both.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.load import BATCH, make_events
from bench.stack import ROOT, Run, in_process_app, log

ORDER = 12
ROUNDS = 6  # alternating
EVENTS_PER_ROUND = 20_000
_TICK = os.sysconf("SC_CLK_TCK")


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK  # utime + stime


def _unprepared(sql: Any) -> Any:
    """The same statements sent as text, parsed and planned by each batch."""
    from sqlalchemy import text

    def plain(clause: Any) -> Any:
        names = (part.removeprefix("EXECUTE ") for part in clause.text.split(";"))
        return text(";".join(sql.prepared[name] for name in names))

    return sql._replace(
        claim=plain(sql.claim), append=plain(sql.append), roll_up=plain(sql.roll_up)
    )


def _spent(ledger: Any, variant: Any, rows: list[Any], size: int, tag: str, pid: int) -> float:
    """The backend's CPU, ms per 1,000 events, to write ``rows`` in batches of ``size``."""
    from app.extensions import db

    ledger._postgresql_sql = lambda: variant
    before = _cpu_seconds(pid)
    for start in range(0, len(rows), size):
        ledger.insert_events(
            [r._replace(event_id=r.event_id + tag) for r in rows[start : start + size]]
        )
        db.session.commit()
    return (_cpu_seconds(pid) - before) * 1000 / (len(rows) / 1000)


def run(run: Run, results: dict[str, Any]) -> None:
    from sqlalchemy import text

    from app.config import Settings
    from app.extensions import db
    from app.ingest import ledger
    from app.ingest.recording import _row
    from app.ingest.validation import EventLimits, validate_event
    from app.pricing.book import price_book
    from tests.helpers import create_database, drop_database

    url = create_database()
    env = {**os.environ, "DATABASE_URL": url, "INSTANCE_DIR": str(run.instance)}
    migrate = [sys.executable, "-c", "from app import create_app; create_app()"]
    subprocess.run(migrate, cwd=ROOT, env=env, check=True)
    build = ledger._postgresql_sql
    shipped = build()
    variants = {"prepared": shipped, "unprepared": _unprepared(shipped)}
    # A request's batch, and the outbox's under load (what the stack's workers get).
    sizes = (BATCH, Settings().meter_batch_size)
    spent: dict[int, dict[str, list[float]]] = {n: {v: [] for v in variants} for n in sizes}
    try:
        app = in_process_app(Run(url, run.instance))
        now = datetime.now(UTC)
        with app.app_context():
            limits = EventLimits.from_settings(Settings())
            book = price_book.get()
            events = make_events(EVENTS_PER_ROUND, 0, now)
            rows = [_row(validate_event(e, now, limits), book, now) for e in events]
            pid = db.session.scalar(text("SELECT pg_backend_pid()"))
            db.session.commit()
            for round_ in range(ROUNDS):
                order = list(variants) if round_ % 2 == 0 else list(variants)[::-1]
                for size in sizes:
                    for name in order:
                        tag = f"-{round_}-{size}-{name}"
                        figure = _spent(ledger, variants[name], rows, size, tag, pid)
                        spent[size][name].append(figure)
            db.session.remove()
            for engine in db.engines.values():
                engine.dispose()
    finally:
        ledger._postgresql_sql = build  # type: ignore[assignment]
        drop_database(url)
    results["ledger_statements"] = {
        f"batch_{size}": {
            name: {"median_ms_per_1000": round(statistics.median(v), 1), "rounds": v}
            for name, v in by_variant.items()
        }
        for size, by_variant in spent.items()
    }
    log(f"ledger statements, PostgreSQL CPU per 1,000 events: {results['ledger_statements']}")


def headline(results: dict[str, Any]) -> dict[str, Any]:
    found = results.get("ledger_statements")
    if not found:
        return {}
    medians = {
        f"{size}_{name}": v["median_ms_per_1000"]
        for size, by_variant in found.items()
        for name, v in by_variant.items()
    }
    return {"ledger_statements_ms": medians}


def rows(results: dict[str, Any]) -> list[tuple[str, Any, str]]:
    found = results.get("ledger_statements")
    if not found:
        return []
    return [
        (
            f"PostgreSQL CPU per 1,000 events, {size.replace('_', 'es of ')}: "
            "prepared / unprepared (ms)",
            f"{v['prepared']['median_ms_per_1000']} / {v['unprepared']['median_ms_per_1000']}",
            "A/B, same run",
        )
        for size, v in found.items()
    ]
