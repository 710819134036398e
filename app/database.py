"""Applying migrations at start-up, safely when API, workers and Beat start together.

On PostgreSQL the upgrade runs under a session advisory lock: the first process
migrates, the others wait, then find nothing to do. On SQLite an exclusive file
lock beside the database file does the same.
"""

from __future__ import annotations

import fcntl
import logging
from collections.abc import Iterator
from contextlib import contextmanager

from flask import Flask
from flask_migrate import upgrade
from sqlalchemy import select, text
from sqlalchemy.exc import InterfaceError, OperationalError

from app.config import PROJECT_ROOT
from app.extensions import db

log = logging.getLogger("usage_billing.db")

MIGRATIONS_DIR = str(PROJECT_ROOT / "migrations")
_ADVISORY_LOCK_ID = 0x75626D67  # "ubmg"


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
def short_read() -> Iterator[None]:
    """A read that releases its connection at once, even one the server dropped.

    ``close()`` rolls back the read transaction, which raises again when the
    server went away mid-read (a restart); the connection is then invalidated
    instead, so the pool replaces it and the caller sees one database error.
    """
    try:
        yield
        db.session.close()
    except (OperationalError, InterfaceError):
        db.session().invalidate()
        raise


def upgrade_database(app: Flask) -> None:
    """Migrate to head and seed prices from the bundled source when none exist."""
    from app.models import ModelPrice
    from app.services.prices import refresh_prices

    with app.app_context(), _migration_lock(app):
        upgrade(directory=MIGRATIONS_DIR)
        if db.session.scalar(select(ModelPrice.id).limit(1)) is None:
            result = refresh_prices()
            log.info("seeded model prices", extra={"added": result.added})
        db.session.remove()
