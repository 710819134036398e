"""The raw-event export: a customer's events (or, for an admin, one customer's or all)
as CSV or JSON lines, streamed in constant memory.

On PostgreSQL a CSV is written by PostgreSQL itself: ``COPY (the export's query)
TO STDOUT (FORMAT csv)`` (the header is ours, sent with the first rows), its cells
already text and neutralised there, so
the API only passes bytes on, at the speed the database produces them (a thread
reads the COPY into a bounded queue the response drains). JSON lines come through a
server-side cursor, ``EXPORT_CHUNK`` at a time, each line built by PostgreSQL. The
embedded SQLite default formats in Python. No key is ever written: an event names
its key by id (and its customer by id), never by key nor hash.
"""

from __future__ import annotations

import codecs
import contextlib
import csv
import io
import queue
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

import orjson
from sqlalchemy import Select, func, literal_column, select
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import DBAPIError

from app.analytics.usage import day_start
from app.columns import money_str
from app.customers.models import ApiKey
from app.extensions import db
from app.ingest.models import UsageEvent
from app.pricing.dimensions import COLUMNS

EXPORT_CHUNK = 10_000
# The exported columns, in order: the event's own, then its key and customer by id.
COLUMNS = (
    "event_id",
    "created_at",
    "received_at",
    "customer_id",
    "key_id",
    "provider",
    "model",
    "task_type",
    "status",
    "execution_id",
    *COLUMNS,
    "tokens_total",
    "usage_extra",
    "model_cost_input",
    "model_cost_output",
    "model_cost_cache_read",
    "cost_input",
    "cost_output",
    "cost_total",
    "charges",
    "pricing_status",
    "usage_flag",
    "execution_time",
    "metadata",
)
_JSON_COLUMNS = frozenset({"usage_extra", "charges", "metadata"})
# The columns a caller's text reaches (every other is a number, a time or ours).
_TEXT = frozenset({"event_id", "provider", "model", "task_type", "status", "execution_id"})
# What makes a spreadsheet take a CSV cell for a formula (OWASP, "CSV Injection").
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def neutral(cell: Any) -> Any:
    """A cell a spreadsheet shows as the text it is: one that would start a formula
    (``=HYPERLINK(…)``, ``+cmd|…``, ``@SUM(…)``) gets a leading apostrophe, as OWASP
    advises; numbers, and text starting otherwise, are left as they are."""
    if isinstance(cell, str) and cell.startswith(FORMULA_STARTS):
        return "'" + cell
    return cell


_OF_KEY = {"customer_id": ApiKey.customer_id, "key_id": ApiKey.id}


@dataclass(frozen=True)
class ExportRequest:
    start: date
    end: date
    format: str  # csv | jsonl
    customer_id: int | None  # None: every customer's (admins only)

    @property
    def filename(self) -> str:
        who = f"customer-{self.customer_id}" if self.customer_id else "all"
        return f"usage-{who}-{self.start}-{self.end}.{self.format}"


def _column(name: str) -> Any:
    if name in _OF_KEY:
        return _OF_KEY[name]
    return UsageEvent.__table__.c[name]


def _query(request: ExportRequest, columns: list[Any]) -> Select[Any]:
    events = UsageEvent.__table__
    query = (
        select(*columns)
        .select_from(events.outerjoin(ApiKey, ApiKey.key_hash == events.c.api_key_hash))
        .where(
            events.c.created_at >= day_start(request.start),
            events.c.created_at < day_start(request.end + timedelta(days=1)),
        )
    )
    if request.customer_id is not None:
        query = query.where(ApiKey.customer_id == request.customer_id)
    return query.order_by(events.c.created_at, events.c.id)


def _postgresql_columns(request: ExportRequest) -> list[Any]:
    """The row as PostgreSQL's text: one CSV's fields (neutralised as ``csv_text``
    does, there, and named as the header names them), or one JSON line."""
    if request.format == "jsonl":
        pairs = ", ".join(f"'{name}', {_sql(name)}" for name in COLUMNS)
        return [literal_column(f"json_build_object({pairs})::text")]
    return [
        literal_column(
            _neutral_sql(f"({_sql(name)})::text") if name in _TEXT else f"({_sql(name)})::text"
        ).label(name)
        for name in COLUMNS
    ]


def _neutral_sql(cell: str) -> str:
    """``neutral`` in PostgreSQL: what a spreadsheet would read as a formula, quoted."""
    starts = ", ".join(f"'{c}'" if c.isprintable() else f"chr({ord(c)})" for c in FORMULA_STARTS)
    apostrophe = "''''"  # the SQL literal of one apostrophe
    return f"CASE WHEN left({cell}, 1) IN ({starts}) THEN {apostrophe} || {cell} ELSE {cell} END"


def _sql(name: str) -> str:
    """One exported column in PostgreSQL: times in UTC ISO 8601, money as exact text."""
    if name == "key_id":
        return "api_keys.id"
    if name == "customer_id":
        return "api_keys.customer_id"
    if name in {"created_at", "received_at"}:
        return (
            f"to_char(usage_events.{name} AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')"
        )
    if name.startswith(("cost", "model_cost")) or name == "execution_time":
        return f"usage_events.{name}::text"  # a string, never a float
    return f"usage_events.{name}"


def _text(name: str, value: Any) -> Any:
    """A value as the export writes it (SQLite's path): strings but for token counts."""
    if value is None:
        return None
    if name in {"created_at", "received_at"}:
        return value.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    if name.startswith(("cost", "model_cost")):
        return money_str(value)
    if name == "execution_time":
        return str(value)
    if name in _JSON_COLUMNS:
        return orjson.dumps(value).decode()
    return value


def csv_text(rows: Iterable[Sequence[Any]], neutralised: bool = False) -> str:
    """Rows as CSV lines (``\n`` ends each, as the export's other lines), every text
    cell ``neutral`` unless it is already (PostgreSQL's export does it as it reads)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerows(rows if neutralised else ([neutral(cell) for cell in row] for row in rows))
    return out.getvalue()


def download_headers(filename: str) -> dict[str, str]:
    """What makes a browser save a response as ``filename``."""
    return {"Content-Disposition": f'attachment; filename="{filename}"'}


def export_chunks(request: ExportRequest) -> Iterator[str]:
    """The file, header first, in chunks of ``EXPORT_CHUNK`` rows. The query runs
    before the first chunk is yielded, so whoever takes that chunk before sending a
    byte (``export_response``) sees any failure as an error, not a cut-off file."""
    postgresql = db.engine.dialect.name == "postgresql"
    if postgresql and request.format == "csv":
        yield from _copied(request)
        return
    columns = _postgresql_columns(request) if postgresql else [_column(n) for n in COLUMNS]
    with db.engine.connect() as conn:
        result = conn.execution_options(stream_results=True, max_row_buffer=EXPORT_CHUNK).execute(
            _query(request, columns)
        )
        if request.format == "csv":
            yield csv_text([COLUMNS])
        for chunk in result.partitions(EXPORT_CHUNK):
            if postgresql:
                yield "".join(f"{line}\n" for (line,) in chunk)
            else:
                yield from _sqlite_chunk(request, chunk)


class _Stopped(Exception):
    """The reader went away: the COPY is abandoned (its connection is not reused)."""


_DONE = object()
_COPY_BUFFERS = 16  # chunks of COPY output held while the response sends the last
_COPY_CHUNK = 256 * 1024  # bytes of rows gathered before they are handed on


def copy_statement(request: ExportRequest, cursor: Any, dialect: Dialect) -> str:
    """The ``COPY (the export's query) TO STDOUT`` that writes the CSV's rows, its
    parameters bound by psycopg2 (``cursor``'s): the export streams it, and the bench
    times it alone as the rate the export is held to. The dialect is given, as the
    export's thread has no app context to find the engine by."""
    compiled = _query(request, _postgresql_columns(request)).compile(dialect=dialect)
    select_sql = cursor.mogrify(str(compiled), compiled.params).decode()
    return f"COPY ({select_sql}) TO STDOUT WITH (FORMAT csv)"


def _copied(request: ExportRequest) -> Iterator[str]:
    """The CSV as PostgreSQL's COPY writes it. psycopg2 pushes COPY data (a row at a
    time) into a file's ``write``; a thread gives it one that gathers them into
    chunks and fills a bounded queue, which this generator drains, so memory holds at
    most ``_COPY_BUFFERS`` chunks. The header goes out with the first rows (or the
    end of an empty export), so a query that fails before its first row is an error,
    not a file cut off after its header. Closing the generator (the client left)
    stops the COPY at its next row."""
    engine = db.engine
    chunks: queue.Queue[Any] = queue.Queue(maxsize=_COPY_BUFFERS)
    stop = threading.Event()

    def hand_on(item: Any) -> None:
        while not stop.is_set():
            try:
                chunks.put(item, timeout=0.5)
                return
            except queue.Full:
                continue
        raise _Stopped

    class Sink:
        def __init__(self) -> None:
            self.rows: list[bytes] = []
            self.size = 0

        def write(self, data: bytes) -> None:
            self.rows.append(data)
            self.size += len(data)
            if self.size >= _COPY_CHUNK:
                self.flush()

        def flush(self) -> None:
            if self.rows:
                hand_on(b"".join(self.rows))
                self.rows, self.size = [], 0

    def copy() -> None:
        raw = engine.raw_connection()
        try:
            cursor = raw.cursor()
            sink = Sink()
            cursor.copy_expert(copy_statement(request, cursor, engine.dialect), sink)
            sink.flush()
            raw.rollback()
            raw.close()
            hand_on(_DONE)
        except BaseException as exc:  # noqa: BLE001 - handed to the reader, which raises it
            raw.invalidate()  # a COPY cut short leaves the connection unusable
            if isinstance(exc, engine.dialect.loaded_dbapi.Error):  # as SQLAlchemy would
                exc = DBAPIError.instance("COPY", None, exc, engine.dialect.loaded_dbapi.Error)
            if not isinstance(exc, _Stopped):
                with contextlib.suppress(_Stopped):
                    hand_on(exc)

    worker = threading.Thread(target=copy, name="export-copy", daemon=True)
    worker.start()
    decoder = codecs.getincrementaldecoder("utf-8")()
    header = csv_text([COLUMNS])
    try:
        while (item := chunks.get()) is not _DONE:
            if isinstance(item, BaseException):
                raise item
            yield header + decoder.decode(item)
            header = ""
        yield header + decoder.decode(b"", final=True)
    finally:
        stop.set()
        worker.join(timeout=5)


def _sqlite_chunk(request: ExportRequest, chunk: Sequence[Any]) -> Iterator[str]:
    rows = [[_text(name, value) for name, value in zip(COLUMNS, row, strict=True)] for row in chunk]
    if request.format == "csv":
        yield csv_text(rows)
        return
    for row in rows:
        fields = {
            name: (orjson.loads(value) if name in _JSON_COLUMNS and value is not None else value)
            for name, value in zip(COLUMNS, row, strict=True)
        }
        yield orjson.dumps(fields).decode() + "\n"


def count_rows(request: ExportRequest) -> int:
    """How many events the export holds (for the command line's progress bar)."""
    return db.session.scalar(_query(request, [func.count()]).order_by(None)) or 0
