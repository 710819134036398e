"""Applying migrations at start-up, safely when API, workers and Beat start together.

On PostgreSQL the upgrade runs under a session advisory lock: the first process
migrates, the others wait, then find nothing to do. On SQLite an exclusive file
lock beside the database file does the same.
"""

from __future__ import annotations

import fcntl
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from importlib import import_module
from typing import Any, cast

from flask import Flask
from flask_migrate import upgrade
from sqlalchemy import Connection, CursorResult, Executable, event, text
from sqlalchemy.exc import InterfaceError, OperationalError

from app.config import PROJECT_ROOT, Settings
from app.extensions import db

log = logging.getLogger("usage_billing.db")

MIGRATIONS_DIR = str(PROJECT_ROOT / "migrations")
_ADVISORY_LOCK_ID = 0x75626D67  # "ubmg"
QUICK_READS = "quick_reads"  # the bind key of quick_read()'s engine
# The database unreachable or restarting: retried by workers, a 503 at the API.
UNAVAILABLE = (OperationalError, InterfaceError)
# Every module that declares tables: each capability keeps its own beside it.
TABLE_MODULES = (
    "app.ingest.models",
    "app.customers.models",
    "app.budgets.models",
    "app.plans.models",
    "app.dashboard.models",
    "app.billing.models",
    "app.jobs.models",
    "app.pricing.models",
    "app.credits.models",
    "app.ratelimits.models",
)


def execute_dml(statement: Executable, params: Any = None) -> CursorResult[Any]:
    """Run an INSERT, UPDATE or DELETE in the session: SQLAlchemy types the result as
    any statement's, though it is a cursor's, which counts the rows it changed."""
    return cast(CursorResult[Any], db.session.execute(statement, params))


def import_tables() -> None:
    """Declare every table, so Alembic and ``db.create_all`` see them all."""
    for module in TABLE_MODULES:
        import_module(module)


@contextmanager
def _migration_lock(app: Flask) -> Iterator[None]:
    if db.engine.dialect.name == "postgresql":
        with db.engine.connect() as conn:
            conn.execute(text("SELECT pg_advisory_lock(:id)"), {"id": _ADVISORY_LOCK_ID})
            conn.commit()
            try:
                yield
            finally:
                conn.execute(text("SELECT pg_advisory_unlock(:id)"), {"id": _ADVISORY_LOCK_ID})
                conn.commit()
        return
    lock_path = app.config["SETTINGS"].instance_dir / "migrate.lock"
    with open(lock_path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextmanager
def quick_read() -> Iterator[Connection]:
    """A connection for a best-effort read on the request path: one round trip per query.

    The session's engine pings each connection it checks out and wraps a read in
    BEGIN … ROLLBACK: four round trips for one SELECT, most of the ingest
    endpoint's database time. This engine (a bind of the same database)
    runs in autocommit and skips the ping. Its callers fall back when the database
    is away, so a connection the server dropped may fail a read once: SQLAlchemy
    then discards it and the pool opens a new one for the next read.
    """
    with db.engines[QUICK_READS].connect() as conn:
        yield conn


def read_snapshot() -> None:
    """Make the rest of this request's reads see the database at one moment.

    An answer made of several reads (usage and the charge it added) must not mix
    two moments: a batch committed between them would show an event without its
    charge. The session's transaction is ended (what it loaded is read again when
    used) and a new one begun that sees one snapshot: REPEATABLE READ on
    PostgreSQL; on SQLite an explicit BEGIN (its driver begins no transaction for a
    SELECT), whose reads see one snapshot of the write-ahead log.
    """
    db.session.rollback()
    if db.engine.dialect.name == "postgresql":
        db.session.connection(execution_options={"isolation_level": "REPEATABLE READ"})
    else:
        db.session.connection().exec_driver_sql("BEGIN")


def engine_options(settings: Settings, **server: str) -> dict[str, Any]:
    """Options for every engine: PostgreSQL ends a session left idle in a transaction.

    A transaction left open by a bug (or a broken connection) holds its row locks
    and would block every later batch that touches the same rollup rows; the
    server ends it instead, and the work is retried. ``server``: more settings of
    this engine's sessions.
    """
    if not settings.sqlalchemy_url.startswith("postgresql"):
        return {}
    timeout_ms = settings.idle_in_transaction_timeout_seconds * 1000
    options = {"idle_in_transaction_session_timeout": str(timeout_ms), **server}
    return {"connect_args": {"options": " ".join(f"-c {k}={v}" for k, v in options.items())}}


def quick_read_options(settings: Settings) -> dict[str, Any]:
    """``quick_read()``'s engine: autocommit, and never a sequential scan.

    Its reads look ids up through a unique index (a batch's event ids, the
    outbox's batch ids). Until autovacuum first analyzes a table (a minute after
    its first rows, on a new install, a restore, a fresh bench database) the
    planner guesses its rows from their width, four times too few for the id
    table, and scanned the whole growing table for each batch's hundred ids:
    70 % of PostgreSQL's CPU for the API (docs/performance.md, the profile). A
    lookup by key needs no statistics to take the index.
    """
    return {"isolation_level": "AUTOCOMMIT", **engine_options(settings, enable_seqscan="off")}


def _sqlite_wal(dbapi_connection: Any, _: Any) -> None:
    """SQLite in write-ahead-log mode: readers and the one writer no longer block each
    other, as API, worker and Beat share the embedded default's file (a reader held a
    writer off until ``database is locked``). FULL sync: a committed batch survives a
    power cut, as on PostgreSQL."""
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.close()


def prepare_engines(app: Flask) -> None:
    """What each engine needs of its database kind: SQLite's journal mode."""
    with app.app_context():
        for engine in db.engines.values():
            if engine.dialect.name == "sqlite":
                event.listen(engine, "connect", _sqlite_wal)


def release_connections(app: Flask) -> None:
    """Close every pooled connection that start-up opened (migrations, price seeding).

    Celery's prefork pool forks after the app is built: a socket left in the
    parent's pool would be shared by every child, and two processes writing on
    one PostgreSQL connection interleave their protocol messages (lost
    transactions, events acknowledged and stored nowhere). Closing them here
    means no connection crosses a fork; ``tasks.worker`` also drops, without
    closing, whatever a pool process inherits anyway.
    """
    with app.app_context():
        for engine in db.engines.values():
            engine.dispose()


def forget_inherited_connections(app: Flask) -> None:
    """In a forked child: drop the parent's pooled connections without closing them.

    ``dispose(close=False)`` leaves the sockets to the parent (closing them
    here would end the parent's sessions), as SQLAlchemy's guide to pools and
    ``os.fork()`` says.
    """
    with app.app_context():
        for engine in db.engines.values():
            engine.dispose(close=False)


def upgrade_database(app: Flask, then: Callable[[], None]) -> None:
    """Migrate to head, then run ``then`` (the price seed) under the same lock, so
    processes starting together seed once."""
    with app.app_context(), _migration_lock(app):
        upgrade(directory=MIGRATIONS_DIR)
        then()
        db.session.remove()
