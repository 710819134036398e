"""SQL that differs by database: INSERT … ON CONFLICT, and ``IN`` a long list."""

from __future__ import annotations

from typing import Any

from sqlalchemy import ColumnElement, Table, any_, bindparam
from sqlalchemy.dialects import postgresql, sqlite

from app.extensions import db


def insert_for(table: Table) -> postgresql.Insert | sqlite.Insert:
    if db.engine.dialect.name == "postgresql":
        return postgresql.insert(table)
    return sqlite.insert(table)


def one_of(column: Any, name: str) -> ColumnElement[bool]:
    """``column IN :name``, the parameter a list; on PostgreSQL ``= ANY(:name)``, one array.

    An expanding ``IN`` renders and binds one parameter per value: for the
    hundred event ids of each ingest request that cost the API more CPU than the
    query itself took (bench/).
    """
    if db.engine.dialect.name == "postgresql":
        return column == any_(bindparam(name, type_=postgresql.ARRAY(column.type)))
    return column.in_(bindparam(name, expanding=True))
