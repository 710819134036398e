"""PostgreSQL's CPU per 1,000 events for a batch's writes, with the statements
prepared once per connection (as shipped) against parsed and planned for every
batch (as before): the same batches of 100 in alternating rounds, in one run, on a
database of the scenario's own (its events would otherwise meet ingest's ids).

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
ROUNDS = 6  # alternating, each of BATCHES batches
BATCHES = 100
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
    spent: dict[str, list[float]] = {name: [] for name in variants}
    try:
        app = in_process_app(Run(url, run.instance))
        now = datetime.now(UTC)
        with app.app_context():
            limits = EventLimits.from_settings(Settings())
            book = price_book.get()
            events = make_events(BATCH * BATCHES, 0, now)
            rows = [_row(validate_event(e, now, limits), book, now) for e in events]
            pid = db.session.scalar(text("SELECT pg_backend_pid()"))
            db.session.commit()
            for round_ in range(ROUNDS):
                order = list(variants) if round_ % 2 == 0 else list(variants)[::-1]
                for name in order:
                    ledger._postgresql_sql = lambda chosen=variants[name]: chosen  # type: ignore[assignment]
                    tag = f"-{round_}-{name}"
                    before = _cpu_seconds(pid)
                    for start in range(0, len(rows), BATCH):
                        batch = [
                            r._replace(event_id=r.event_id + tag)
                            for r in rows[start : start + BATCH]
                        ]
                        ledger.insert_events(batch)
                        db.session.commit()
                    spent[name].append((_cpu_seconds(pid) - before) * 1000 / (len(rows) / 1000))
            db.session.remove()
            for engine in db.engines.values():
                engine.dispose()
    finally:
        ledger._postgresql_sql = build  # type: ignore[assignment]
        drop_database(url)
    results["ledger_statements"] = {
        name: {
            "median_ms_per_1000": round(statistics.median(v), 1),
            "rounds": [round(x, 1) for x in v],
        }
        for name, v in spent.items()
    }
    log(f"ledger statements, PostgreSQL CPU per 1,000 events: {results['ledger_statements']}")


def headline(results: dict[str, Any]) -> dict[str, Any]:
    found = results.get("ledger_statements")
    return (
        {"ledger_statements_ms": {k: v["median_ms_per_1000"] for k, v in found.items()}}
        if found
        else {}
    )


def rows(results: dict[str, Any]) -> list[tuple[str, Any, str]]:
    found = results.get("ledger_statements")
    if not found:
        return []
    return [
        (
            "PostgreSQL CPU per 1,000 events: batch writes prepared / unprepared (ms)",
            f"{found['prepared']['median_ms_per_1000']} / {found['unprepared']['median_ms_per_1000']}",
            "A/B, same run",
        )
    ]
