"""Request shapes, declared once as pydantic models: validation and the OpenAPI document.

``EventShape`` is one usage event, checked by ``validate_event`` at the API (a
4xx naming the field) and again at the worker (events from the middleware never
passed the API; a bad one is parked). ``/openapi.json`` renders the same shapes
(``app/api/openapi.py``), so the document and the checks cannot drift: an
unknown field is refused here, and the document says so.

Checks that need the time or the settings (an event's age, the size of its
metadata) run after pydantic's, in ``validate_event``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Annotated, Any, NamedTuple, NotRequired

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictFloat,
    StrictInt,
    StrictStr,
    StringConstraints,
    TypeAdapter,
)
from typing_extensions import TypedDict

from app.config import Settings
from app.errors import ValidationError
from app.shapes import parse, trimmed

MAX_TOKENS = 10**9  # far above any context window; rejects counter overflows
EVENT_SCHEMA = "UsageEvent"  # the name /openapi.json gives an event's shape
_MAX_METADATA_DEPTH = 5


@dataclass(frozen=True)
class EventLimits:
    max_age: timedelta
    max_future: timedelta
    max_metadata_bytes: int

    @classmethod
    def from_settings(cls, settings: Settings) -> EventLimits:
        return cls(
            max_age=timedelta(days=settings.max_event_age_days),
            max_future=timedelta(seconds=settings.max_event_future_seconds),
            max_metadata_bytes=settings.max_metadata_bytes,
        )


Tokens = Annotated[StrictInt, Field(ge=0, le=MAX_TOKENS)]


def _seconds(value: Any) -> Decimal | None:
    """A number of seconds, also as a decimal string; never NaN or Infinity."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float | str | Decimal):
        raise ValidationError("execution_time must be a number of seconds", field="execution_time")
    try:
        seconds = Decimal(str(value))
    except InvalidOperation as exc:
        raise ValidationError("execution_time must be a number", field="execution_time") from exc
    if not seconds.is_finite() or not 0 <= seconds < 10**8:
        raise ValidationError("execution_time must be between 0 and 10^8", field="execution_time")
    return seconds.quantize(Decimal("0.001"))


def _check_nesting(value: Any) -> None:
    """Refuse metadata nested past ``_MAX_METADATA_DEPTH``, or with an integer past 64 bits.

    Walked with a stack, not recursion, and stopped at the first level too deep:
    a body nested a thousand levels is a 400, never a ``RecursionError``. Events
    travel to the worker as orjson (app/ingest/wire.py), which reads an integer past 64
    bits back as a float: it would not be stored as sent.
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


def _metadata(value: dict[str, Any] | None, limits: EventLimits) -> dict[str, Any] | None:
    if value is None:
        return None
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


def _instant(value: str, field: str, now: datetime, limits: EventLimits) -> datetime:
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError as exc:
        raise ValidationError(f"{field} must be ISO 8601", field=field) from exc
    if parsed.tzinfo is None:
        raise ValidationError(f"{field} must carry a UTC offset", field=field)
    try:
        parsed = parsed.astimezone(UTC)
    except OverflowError as exc:  # 0001-01-01 at +14:00 is before the calendar's start
        raise ValidationError(f"{field} is outside the calendar", field=field) from exc
    if parsed > now + limits.max_future:
        raise ValidationError(f"{field} is in the future", field=field)
    if parsed < now - limits.max_age:
        raise ValidationError(f"{field} is older than {limits.max_age.days} days", field=field)
    return parsed


# -- One usage event ---------------------------------------------------------------------
class EventShape(TypedDict):
    """One metered call: its fields, types and bounds, checked by pydantic's compiled core.

    What JSON Schema cannot say is checked after it, in ``validate_event``: text
    is printable, cached tokens are part of the input, the time is within the
    accepted window, the metadata is small, shallow and plain JSON.
    """

    __pydantic_config__ = ConfigDict(extra="forbid", title=EVENT_SCHEMA)  # type: ignore[misc]

    event_id: Annotated[
        StrictStr, StringConstraints(strip_whitespace=True, pattern=r"^[A-Za-z0-9._:\-]{1,128}$")
    ]
    api_key_hash: Annotated[
        StrictStr,
        StringConstraints(pattern=r"^[0-9a-f]{64}$"),
        Field(description="the lower-case SHA-256 hex of the API key, never the key"),
    ]
    provider: trimmed(64)
    model: trimmed(128)
    tokens_input: Tokens
    tokens_output: Tokens
    tokens_cache_read: NotRequired[
        Annotated[Tokens | None, Field(description="cached input tokens, at most tokens_input")]
    ]
    timestamp: NotRequired[
        Annotated[
            StrictStr | None,
            Field(description="ISO 8601 with a UTC offset; the time of receipt when absent"),
        ]
    ]
    created_at: NotRequired[
        Annotated[StrictStr | None, Field(description="alias of timestamp; give one or the other")]
    ]
    execution_id: NotRequired[trimmed(128) | None]
    task_type: NotRequired[trimmed(64) | None]
    status: NotRequired[Annotated[trimmed(32) | None, Field(description='"success" when absent')]]
    execution_time: NotRequired[
        Annotated[StrictInt | StrictFloat | StrictStr | None, Field(description="seconds, ≥ 0")]
    ]
    metadata: NotRequired[Annotated[dict[str, Any] | None, Field(description="at most 5 levels")]]


EVENT_SHAPE = TypeAdapter(EventShape)
_TEXT_FIELDS = ("provider", "model", "execution_id", "task_type", "status")


class EventIn(NamedTuple):
    """A valid event. A tuple, not a model instance: built twice per event (API and
    worker) and read by position on the worker's hot path."""

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


def _when(event: dict[str, Any], now: datetime, limits: EventLimits) -> tuple[datetime, str]:
    """The instant and its ISO text (as sent, or ``now``'s when the event has none)."""
    timestamp, alias = event.get("timestamp"), event.get("created_at")
    if timestamp is not None and alias is not None:
        raise ValidationError(
            "give the event's time once, as timestamp (created_at is its alias)",
            field="created_at",
        )
    if alias is not None:
        return _instant(alias, "created_at", now, limits), alias
    if timestamp is not None:
        return _instant(timestamp, "timestamp", now, limits), timestamp
    return now, now.isoformat()


def validate_event(raw: Any, now: datetime, limits: EventLimits) -> EventIn:
    """One event, or a ``ValidationError`` naming its first field at fault."""
    event = parse(EVENT_SHAPE, raw, whole="event")
    get = event.get
    for name in _TEXT_FIELDS:
        value = get(name)
        if value is not None and not value.isprintable():
            raise ValidationError(f"{name} must be printable characters", field=name)
    tokens_input = event["tokens_input"]
    tokens_cache_read = get("tokens_cache_read") or 0
    if tokens_cache_read > tokens_input:
        raise ValidationError(
            "tokens_cache_read cannot exceed tokens_input", field="tokens_cache_read"
        )
    created_at, timestamp = _when(event, now, limits)
    return EventIn(
        event["event_id"],
        event["api_key_hash"],
        event["provider"],
        event["model"],
        tokens_input,
        event["tokens_output"],
        tokens_cache_read,
        created_at,
        timestamp,
        get("execution_id"),
        get("task_type"),
        get("status") or "success",
        _seconds(get("execution_time")),
        _metadata(get("metadata"), limits),
    )


class EventBatch(BaseModel):
    """A batch of events; each is checked on its own (``EventIn``), so a bad event
    rejects only itself. ``/openapi.json`` shows the items as ``UsageEvent``."""

    model_config = ConfigDict(extra="forbid")

    events: list[Any] = Field(min_length=1, description="at most MAX_BATCH_EVENTS (413 beyond)")
