"""Validating one usage event: the same rules for the HTTP API and the worker.

The API rejects bad events with a 4xx naming the field; the worker re-checks
(events from the middleware never passed the API) and parks a bad one in
``rejected_events`` instead of failing its batch.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any, NamedTuple

from app.errors import ValidationError

MAX_TOKENS = 10**9  # far above any context window; rejects counter overflows
_HASH = re.compile(r"^[0-9a-f]{64}$")
_EVENT_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")
_MAX_METADATA_DEPTH = 5


# What an event may hold (the fields of ``EventIn.to_message``), and the original
# design's name for its time, taken as ``timestamp``.
EVENT_FIELDS = frozenset(
    {
        "event_id",
        "api_key_hash",
        "provider",
        "model",
        "tokens_input",
        "tokens_output",
        "tokens_cache_read",
        "timestamp",
        "execution_id",
        "task_type",
        "status",
        "execution_time",
        "metadata",
        "created_at",
    }
)
TIMESTAMP_ALIAS = "created_at"


@dataclass(frozen=True)
class EventLimits:
    max_age: timedelta
    max_future: timedelta
    max_metadata_bytes: int


class EventIn(NamedTuple):
    """A valid event. A tuple, not a frozen dataclass: built twice per event (API and
    worker), and a frozen dataclass's ``__init__`` took a quarter of validation.
    Built positionally: keywords cost a NamedTuple twice as much."""

    event_id: str
    api_key_hash: str
    provider: str
    model: str
    tokens_input: int
    tokens_output: int
    tokens_cache_read: int
    created_at: datetime
    timestamp: str  # created_at as the ISO text it came in (formatting it again cost more)
    execution_id: str | None
    task_type: str | None
    status: str
    execution_time: Decimal | None
    metadata: dict[str, Any] | None

    def to_message(self) -> dict[str, Any]:
        """The JSON-safe form a Celery message carries."""
        return {
            "event_id": self.event_id,
            "api_key_hash": self.api_key_hash,
            "provider": self.provider,
            "model": self.model,
            "tokens_input": self.tokens_input,
            "tokens_output": self.tokens_output,
            "tokens_cache_read": self.tokens_cache_read,
            "timestamp": self.timestamp,
            "execution_id": self.execution_id,
            "task_type": self.task_type,
            "status": self.status,
            "execution_time": None if self.execution_time is None else str(self.execution_time),
            "metadata": self.metadata,
        }


def string_field(raw: Any, name: str, max_len: int, required: bool = True) -> str | None:
    """A trimmed string of printable characters, or a 400 naming the field.

    Shared by every JSON body we take: PostgreSQL refuses NUL in text, and
    control or bidi characters in a name only ever mislead.
    """
    value = raw.get(name) if isinstance(raw, dict) else None
    if value is None:
        if required:
            raise ValidationError(f"{name} is required", field=name)
        return None
    stripped = value.strip() if isinstance(value, str) else ""
    if not stripped:
        raise ValidationError(f"{name} must be a non-empty string", field=name)
    if len(value) > max_len or not value.isprintable():
        raise ValidationError(f"{name} must be at most {max_len} printable characters", field=name)
    return stripped


def _tokens(raw: dict[str, Any], name: str, required: bool = True) -> int:
    value = raw.get(name)
    if value is None and not required:
        return 0
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValidationError(f"{name} must be an integer", field=name)
    if not 0 <= value <= MAX_TOKENS:
        raise ValidationError(f"{name} must be between 0 and {MAX_TOKENS}", field=name)
    return value


def _timestamp(raw: dict[str, Any], now: datetime, limits: EventLimits) -> tuple[datetime, str]:
    """The instant and its ISO text: the text as sent, which any reader parses to
    the same instant, or ``now``'s when the event has none."""
    value = raw.get("timestamp")
    if value is None:
        return now, now.isoformat()
    if not isinstance(value, str):
        raise ValidationError("timestamp must be an ISO 8601 string", field="timestamp")
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError as exc:
        raise ValidationError("timestamp must be ISO 8601", field="timestamp") from exc
    if parsed.tzinfo is None:
        raise ValidationError("timestamp must carry a UTC offset", field="timestamp")
    try:
        parsed = parsed.astimezone(UTC)
    except OverflowError as exc:  # 0001-01-01 at +14:00 is before the calendar's start
        raise ValidationError("timestamp is outside the calendar", field="timestamp") from exc
    if parsed > now + limits.max_future:
        raise ValidationError("timestamp is in the future", field="timestamp")
    if parsed < now - limits.max_age:
        raise ValidationError(
            f"timestamp is older than {limits.max_age.days} days", field="timestamp"
        )
    return parsed, value


def _check_nesting(value: dict[str, Any]) -> None:
    """Refuse metadata nested past ``_MAX_METADATA_DEPTH``, or with an integer past 64 bits.

    Walked with a stack, not recursion, and stopped at the first level too deep:
    a body nested a thousand levels must be a 400, never a ``RecursionError``.
    Events travel to the worker as orjson (app/wire.py), which reads an integer
    past 64 bits back as a float: it would not be stored as sent.
    """
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict | list):
            if level > _MAX_METADATA_DEPTH:
                raise ValidationError(
                    f"metadata nests deeper than {_MAX_METADATA_DEPTH} levels", field="metadata"
                )
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, level + 1) for child in children)
        elif isinstance(item, int) and not -(2**63) <= item < 2**64:
            raise ValidationError("metadata numbers must fit in 64 bits", field="metadata")


def _metadata(raw: dict[str, Any], limits: EventLimits) -> dict[str, Any] | None:
    value = raw.get("metadata")
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ValidationError("metadata must be an object", field="metadata")
    _check_nesting(value)
    try:  # NaN and Infinity parse in Python but PostgreSQL's json refuses them
        size = len(json.dumps(value, ensure_ascii=False, allow_nan=False).encode("utf-8"))
    except ValueError as exc:
        raise ValidationError(
            "metadata must be plain JSON (no NaN or Infinity)", field="metadata"
        ) from exc
    if size > limits.max_metadata_bytes:
        raise ValidationError(
            f"metadata is larger than {limits.max_metadata_bytes} bytes", field="metadata"
        )
    return value


def _execution_time(raw: dict[str, Any]) -> Decimal | None:
    value = raw.get("execution_time")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float, str, Decimal)):
        raise ValidationError("execution_time must be a number of seconds", field="execution_time")
    try:
        seconds = Decimal(str(value))
    except InvalidOperation as exc:
        raise ValidationError("execution_time must be a number", field="execution_time") from exc
    if not seconds.is_finite() or not 0 <= seconds < 10**8:
        raise ValidationError("execution_time must be between 0 and 10^8", field="execution_time")
    return seconds.quantize(Decimal("0.001"))


def _known_fields(raw: dict[str, Any]) -> dict[str, Any]:
    """The event with ``created_at`` read as ``timestamp``; an unknown field is a 400.

    A field we do not store must not be dropped silently: a client that names
    the event's time differently would have its event dated now.
    """
    unknown = raw.keys() - EVENT_FIELDS
    if unknown:
        names = sorted(unknown)
        raise ValidationError(f"unknown field(s): {json.dumps(names)[1:-1]}", field=names[0])
    if TIMESTAMP_ALIAS in raw:
        if "timestamp" in raw:
            raise ValidationError(
                "give the event's time once, as timestamp (created_at is its alias)",
                field=TIMESTAMP_ALIAS,
            )
        raw = {**raw, "timestamp": raw[TIMESTAMP_ALIAS]}
    return raw


def validate_event(raw: Any, now: datetime, limits: EventLimits) -> EventIn:
    if not isinstance(raw, dict):
        raise ValidationError("each event must be a JSON object", field="event")
    raw = _known_fields(raw)
    event_id = string_field(raw, "event_id", 128)
    assert event_id is not None
    if not _EVENT_ID.match(event_id):
        raise ValidationError("event_id may use letters, digits and . _ : -", field="event_id")
    api_key_hash = raw.get("api_key_hash")
    if not isinstance(api_key_hash, str) or not _HASH.match(api_key_hash):
        raise ValidationError(
            "api_key_hash must be the lower-case SHA-256 hex of the API key", field="api_key_hash"
        )
    tokens_input = _tokens(raw, "tokens_input")
    tokens_cache_read = _tokens(raw, "tokens_cache_read", required=False)
    if tokens_cache_read > tokens_input:
        raise ValidationError(
            "tokens_cache_read cannot exceed tokens_input", field="tokens_cache_read"
        )
    provider = string_field(raw, "provider", 64) or ""
    model = string_field(raw, "model", 128) or ""
    tokens_output = _tokens(raw, "tokens_output")
    created_at, timestamp = _timestamp(raw, now, limits)
    return EventIn(
        event_id,
        api_key_hash,
        provider,
        model,
        tokens_input,
        tokens_output,
        tokens_cache_read,
        created_at,
        timestamp,
        string_field(raw, "execution_id", 128, required=False),
        string_field(raw, "task_type", 64, required=False),
        string_field(raw, "status", 32, required=False) or "success",
        _execution_time(raw),
        _metadata(raw, limits),
    )
