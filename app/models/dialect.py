"""INSERT … ON CONFLICT for whichever database the app runs on."""

from __future__ import annotations

from sqlalchemy import Table
from sqlalchemy.dialects import postgresql, sqlite

from app.extensions import db


def insert_for(table: Table) -> postgresql.Insert | sqlite.Insert:
    if db.engine.dialect.name == "postgresql":
        return postgresql.insert(table)
    return sqlite.insert(table)
