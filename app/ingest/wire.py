"""How usage events are encoded on their way to a worker: spool lines and batches.

Encoding every event twice at the API (a spool line, then the batch) and
decoding it at the worker is a large share of the API's CPU with the standard
library; ``orjson`` does the same in a fraction. It refuses a few
values the standard library takes (integers past 64 bits, strings with lone
surrogates), which an event the API has not validated (the middleware's) may
carry: those fall back to the standard library, written as ASCII so that any
string encodes, and nothing is ever refused here; the worker's validation then
parks such an event as for any other bad value. (orjson reads an integer past
64 bits back as a float, so validation refuses those in metadata; token counts
that large are invalid anyway.) orjson writes NaN and Infinity as null, so the
middleware sends those as text (app/ingest).
"""

from __future__ import annotations

import json
from typing import Any

import orjson
from kombu.serialization import register

SERIALIZER = "orjson"  # the Celery serializer name of ingest batches
CONTENT_TYPE = "application/x-orjson"


def dumps(value: Any) -> bytes:
    """Compact JSON as UTF-8 bytes."""
    try:
        return orjson.dumps(value)
    except TypeError:
        return json.dumps(value, separators=(",", ":")).encode("ascii")


def loads(data: bytes | str) -> Any:
    """Parse what ``dumps`` wrote (the standard library for what orjson refuses to read)."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return json.loads(data)


def register_serializer() -> None:
    """Make ``SERIALIZER`` known to kombu (idempotent); both ends must accept it."""
    register(SERIALIZER, dumps, loads, content_type=CONTENT_TYPE, content_encoding="binary")
