"""SQL that differs by database: INSERT … ON CONFLICT, and ``IN`` a long list."""

from __future__ import annotations

from typing import Any

from sqlalchemy import ColumnElement, Dialect, Integer, String, any_, bindparam, func
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.types import TypeDecorator

from app.extensions import db


def insert_for(table: Any) -> Any:
    """The dialect's INSERT (both have ``on_conflict_do_nothing``), for ``table``."""
    if db.engine.dialect.name == "postgresql":
        return postgresql.insert(table)
    return sqlite.insert(table)


class _Joined(TypeDecorator[list[str]]):
    """A list of strings bound as one comma-separated string."""

    impl = String
    cache_ok = True

    def process_bind_param(self, value: list[str] | None, dialect: Dialect) -> str | None:
        if value is None:
            return None
        joined = ",".join(value)
        if joined.count(",") != len(value) - 1:
            raise ValueError("one_of() values cannot contain a comma")
        return joined


def one_of(column: Any, name: str) -> ColumnElement[bool]:
    """``column IN :name``, the parameter a list of strings without commas (event and
    batch ids); on PostgreSQL ``= ANY(string_to_array(:name, ','))``, one string.

    An expanding ``IN`` renders and binds one parameter per value: for the
    hundred event ids of each ingest request that cost the API more CPU than the
    query itself took. An array parameter is still adapted value by value, by
    SQLAlchemy and psycopg2: one string costs the API less, and PostgreSQL
    parses it faster too.
    """
    if db.engine.dialect.name == "postgresql":
        return column == any_(func.string_to_array(bindparam(name, type_=_Joined()), ","))
    return column.in_(bindparam(name, expanding=True))


def in_ids(column: Any, ids: list[int]) -> ColumnElement[bool]:
    """``column IN ids`` for thousands of ids (a report's customers): on PostgreSQL one
    array parameter (``= ANY``), not one bound parameter per id."""
    if db.engine.dialect.name == "postgresql":
        return column == any_(bindparam(None, value=list(ids), type_=ARRAY(Integer)))
    return column.in_(ids)
