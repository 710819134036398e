"""Request shapes, declared once as pydantic models: validation and the OpenAPI document.

``EventShape`` is one usage event, checked by ``validate_event`` at the API (a
4xx naming the field) and at the worker for every event the API did not check
(the middleware's, a parked payload replayed, a spool of an older release: a bad
one is parked). An event the API checked reaches the worker marked as such
(``EventIn.to_message``) and is read back by ``read_message`` without its shape
checked twice: that second check was a third of the worker's CPU per event.
``/openapi.json`` renders the same shapes (``app/api/openapi.py``), so the
document and the checks cannot drift: an unknown field is refused here, and the
document says so.

Checks that need the time or the settings (an event's age, the size of its
metadata) run after pydantic's, in ``validate_event``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Annotated, Any, Literal, NamedTuple, NotRequired, cast

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

from app.columns import NON_FINITE
from app.config import Settings
from app.errors import ValidationError
from app.ingest.provider_usage import UsageShapeError, extract
from app.observability.metrics import EVENTS_PARKED, EVENTS_REJECTED, at_zero
from app.pricing.dimensions import COLUMN_OF, DIMENSIONS, PART_COLUMNS, check_parts, usage_keys
from app.shapes import Text, parse, printable

MAX_TOKENS = 10**9  # far above any context window; rejects counter overflows
EVENT_SCHEMA = "UsageEvent"  # the name /openapi.json gives an event's shape
_MAX_METADATA_DEPTH = 5
USAGE_KEYS = tuple(d.usage_key for d in DIMENSIONS)  # in EventIn's order of its counts


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


def _check_json(value: Any, field: str, max_depth: int) -> None:
    """Refuse JSON nested past ``max_depth``, or with an integer past 64 bits.

    Walked with a stack, not recursion, and stopped at the first level too deep:
    a body nested a thousand levels is a 400, never a ``RecursionError``. Events
    travel to the worker as orjson (app/ingest/wire.py), which reads an integer past 64
    bits back as a float: it would not be stored as sent.
    """
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict | list):
            if level > max_depth:
                raise ValidationError(f"{field} nests deeper than {max_depth} levels", field=field)
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, level + 1) for child in children)
        elif isinstance(item, int) and not -(2**63) <= item < 2**64:
            raise ValidationError(f"{field} numbers must fit in 64 bits", field=field)


def _check_finite(value: Any) -> None:
    """Refuse a provider's usage holding NaN or Infinity, as a number or as the text
    ``finite_json`` wrote it as (the middleware's): the price source's extractors
    skip a count that is not a number as if absent, and a NaN cached-token count must
    not become 0. In C (``json.dumps``), which also refuses nesting past what it can
    walk: this runs on every such event the worker records."""
    try:
        text = json.dumps(value, allow_nan=False)
    except (ValueError, RecursionError):
        raise ValidationError(
            "provider_usage holds NaN, Infinity or nests too deep", field="provider_usage"
        ) from None
    if any(f'"{marker}"' in text for marker in NON_FINITE):
        raise ValidationError(
            "provider_usage holds a count that is NaN or Infinity", field="provider_usage"
        )


def _metadata(value: dict[str, Any] | None, limits: EventLimits) -> dict[str, Any] | None:
    if value is None:
        return None
    _check_json(value, "metadata", _MAX_METADATA_DEPTH)
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
Part = Annotated[Tokens | None, Field(description="a part of the count it names")]
# The eight counts, in EventIn's order of them (``USAGE_KEYS``).
Counts = tuple[int, int, int, int, int, int, int, int]
UsageFlag = Literal["stream_cut_off", "stream_without_usage"]


class EventShape(TypedDict):
    """One metered call: its fields, types and bounds, checked by pydantic's compiled core.

    The usage is given flat (``tokens_input`` … in the price source's
    convention, or ``tokens_input_uncached`` in Anthropic's) or as the
    provider sent it (``provider_usage``). What JSON Schema cannot say is
    checked after it, in ``validate_event``: one usage, its parts within their
    wholes, printable text, a time within the accepted window, small and
    shallow plain-JSON metadata.
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
    provider: Annotated[str, Text(64, checked=False)]
    model: NotRequired[
        Annotated[
            Annotated[str, Text(128, checked=False)],
            Field(description="required unless provider_usage names it"),
        ]
    ]
    tokens_input: NotRequired[
        Annotated[
            Tokens,
            Field(description="every input token, cache reads and writes and audio included"),
        ]
    ]
    tokens_input_uncached: NotRequired[
        Annotated[
            Tokens,
            Field(
                description="instead of tokens_input: the input tokens neither read from nor"
                " written to the cache (Anthropic's input_tokens)"
            ),
        ]
    ]
    tokens_output: NotRequired[
        Annotated[Tokens, Field(description="every output token, reasoning and audio included")]
    ]
    tokens_cache_read: NotRequired[Part]
    tokens_cache_write: NotRequired[Part]
    tokens_input_audio: NotRequired[Part]
    tokens_cache_audio_read: NotRequired[Part]
    tokens_output_audio: NotRequired[Part]
    tokens_output_reasoning: NotRequired[Part]
    usage_extra: NotRequired[
        Annotated[
            dict[str, Tokens] | None,
            Field(description="any other usage key of genai-prices (web_searches, …)"),
        ]
    ]
    provider_usage: NotRequired[
        Annotated[
            dict[str, Any] | None,
            Field(description="instead of the token counts: the provider's response or usage"),
        ]
    ]
    api_flavor: NotRequired[
        Annotated[
            Annotated[str, Text(32, checked=False)] | None,
            Field(description="the provider's API provider_usage comes from (chat, responses…)"),
        ]
    ]
    usage_flag: NotRequired[
        Annotated[UsageFlag | None, Field(description="why the usage may be short (streams)")]
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
    execution_id: NotRequired[Annotated[str, Text(128, checked=False)] | None]
    task_type: NotRequired[Annotated[str, Text(64, checked=False)] | None]
    status: NotRequired[
        Annotated[
            Annotated[str, Text(32, checked=False)] | None,
            Field(description='"success" when absent'),
        ]
    ]
    execution_time: NotRequired[
        Annotated[StrictInt | StrictFloat | StrictStr | None, Field(description="seconds, ≥ 0")]
    ]
    metadata: NotRequired[Annotated[dict[str, Any] | None, Field(description="at most 5 levels")]]


EVENT_SHAPE = TypeAdapter(EventShape)
# The fields an event can be refused or parked for, each series exported from the start.
FAULT_FIELDS = (*EventShape.__annotations__, "event", "usage")
at_zero(EVENTS_REJECTED, *((name,) for name in FAULT_FIELDS))
at_zero(EVENTS_PARKED, *((name,) for name in FAULT_FIELDS))
_TEXT_FIELDS = ("provider", "model", "execution_id", "task_type", "status")
_FLAT_USAGE = (
    "tokens_input",
    "tokens_input_uncached",
    "tokens_output",
    *PART_COLUMNS,
    "usage_extra",
)


class EventIn(NamedTuple):
    """A valid event. A tuple, not a model instance: built twice per event (API and
    worker) and read by position on the worker's hot path. Its usage is in the price
    source's convention, whatever form it came in."""

    event_id: str
    api_key_hash: str
    provider: str
    model: str
    tokens_input: int
    tokens_output: int
    tokens_cache_read: int
    tokens_cache_write: int
    tokens_input_audio: int
    tokens_cache_audio_read: int
    tokens_output_audio: int
    tokens_output_reasoning: int
    usage_extra: dict[str, int] | None
    usage_flag: str | None
    created_at: datetime
    timestamp: str  # created_at as the ISO text it came in (formatting it again cost more)
    execution_id: str | None
    task_type: str | None
    status: str
    execution_time: Decimal | None
    metadata: dict[str, Any] | None

    def counts(self) -> dict[str, int]:
        """The usage by the price source's usage keys, every dimension's stated (0 too)."""
        counts = dict(zip(USAGE_KEYS, self[4:12], strict=True))
        if self.usage_extra:
            counts.update(self.usage_extra)
        return counts

    def to_message(self) -> dict[str, Any]:
        """The JSON-safe form a Celery message carries: the usage flat, parts only when
        there are any, and the mark that it was checked (``read_message``)."""
        message = {
            CHECKED: CHECKED_FORM,
            "event_id": self.event_id,
            "api_key_hash": self.api_key_hash,
            "provider": self.provider,
            "model": self.model,
            "tokens_input": self.tokens_input,
            "tokens_output": self.tokens_output,
            "timestamp": self.timestamp,
            "execution_id": self.execution_id,
            "task_type": self.task_type,
            "status": self.status,
            "execution_time": None if self.execution_time is None else str(self.execution_time),
            "metadata": self.metadata,
        }
        for name, value in zip(PART_COLUMNS, self[6:12], strict=True):
            if value:
                message[name] = value
        for name in ("usage_extra", "usage_flag"):
            if getattr(self, name) is not None:
                message[name] = getattr(self, name)
        return message


# The mark ``to_message`` puts on an event built from a checked ``EventIn``. A client
# cannot send it (``EventShape`` forbids unknown fields, so the API refuses it) and
# the middleware's events never carry it; so only an event the API checked has it.
# A new message form takes a new number: an older one is then checked in full.
CHECKED = "checked_form"
CHECKED_FORM = 1
_COUNT_NAMES = ("tokens_input", "tokens_output")


def read_message(raw: Any, now: datetime, limits: EventLimits) -> EventIn:
    """The worker's read of an event: one the API checked (``to_message``'s mark) taken
    as it is; any other checked in full (``validate_event``).

    Only what the worker's own clock decides is checked again: the event's time within
    the accepted window, as before. The counts, which pricing does arithmetic on, are
    made sure of too (cheaply: whole numbers in range), so that even a message written
    by hand into Redis parks its event instead of failing its batch for ever. Anything
    else amiss in a marked message sends it to the full check, which names the field.
    """
    if type(raw) is not dict or raw.get(CHECKED) != CHECKED_FORM:
        return validate_event(raw, now, limits)
    try:
        get = raw.get
        counts = [raw[name] for name in _COUNT_NAMES] + [get(name, 0) for name in PART_COLUMNS]
        extra = get("usage_extra")
        every_count = counts if extra is None else [*counts, *extra.values()]
        if not all(type(n) is int and 0 <= n <= MAX_TOKENS for n in every_count):
            raise TypeError("a count is not a whole number in range")
        seconds = get("execution_time")
        timestamp = raw["timestamp"]
        return EventIn._make(  # _make: the counts are spread in, which EventIn() cannot type
            (
                raw["event_id"],
                raw["api_key_hash"],
                raw["provider"],
                raw["model"],
                *counts,
                extra,
                get("usage_flag"),
                _instant(timestamp, "timestamp", now, limits),
                timestamp,
                get("execution_id"),
                get("task_type"),
                raw["status"],
                None if seconds is None else Decimal(seconds),
                get("metadata"),
            )
        )
    except (KeyError, AttributeError, TypeError, ValueError, ArithmeticError):
        unmarked = {key: value for key, value in raw.items() if key != CHECKED}
        return validate_event(unmarked, now, limits)


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


_ZERO_PARTS = (0,) * len(PART_COLUMNS)


def _flat_usage(event: dict[str, Any]) -> tuple[Counts, dict[str, int] | None]:
    """(tokens_input, tokens_output, the parts…) and the other usage, of a flat event."""
    get = event.get
    if "tokens_output" not in event:
        raise ValidationError("tokens_output is required", field="tokens_output")
    parts = tuple(get(name) or 0 for name in PART_COLUMNS)
    uncached = get("tokens_input_uncached")
    if uncached is not None:
        if "tokens_input" in event:
            raise ValidationError(
                "give tokens_input (all input tokens) or tokens_input_uncached, not both",
                field="tokens_input_uncached",
            )
        tokens_input = uncached + parts[0] + parts[1]  # + cache reads + cache writes
        if tokens_input > MAX_TOKENS:
            raise ValidationError(
                f"the input tokens add up to more than {MAX_TOKENS}", field="tokens_input_uncached"
            )
    elif "tokens_input" in event:
        tokens_input = event["tokens_input"]
    else:
        raise ValidationError("tokens_input is required", field="tokens_input")
    extra = get("usage_extra") or None
    if extra is not None:
        for key in extra:
            if key not in usage_keys() or key in COLUMN_OF:
                raise ValidationError(
                    f"usage_extra: {key!r} is not a usage key of its own (see docs/api.md)",
                    field="usage_extra",
                )
    usage = (tokens_input, event["tokens_output"], *parts)
    if extra is not None or parts != _ZERO_PARTS:
        check_parts(dict(zip(USAGE_KEYS, usage, strict=True)) | (extra or {}))
    return usage, extra


def _provider_usage(event: dict[str, Any]) -> tuple[Counts, dict[str, int] | None, str]:
    """The usage of a provider's own response, and the model it names."""
    mixed = next((name for name in _FLAT_USAGE if name in event), None)
    if mixed is not None:
        raise ValidationError(
            f"give the usage once: provider_usage or the token counts, not {mixed} too",
            field=mixed,
        )
    _check_finite(event["provider_usage"])
    try:
        found = extract(event["provider"], event["provider_usage"], event.get("api_flavor"))
    except UsageShapeError as exc:
        raise ValidationError(str(exc), field="provider_usage") from None
    extra = {}
    for key, value in found.counts.items():
        if not isinstance(value, int) or not value <= MAX_TOKENS:
            raise ValidationError(
                f"provider_usage: {key} must be a whole number up to {MAX_TOKENS}",
                field="provider_usage",
            )
        if key not in COLUMN_OF:
            extra[key] = value
    columns = [found.counts.get(key, 0) for key in USAGE_KEYS]
    check_parts(found.counts)
    model = event.get("model") or found.model
    if not model:
        raise ValidationError("model: the provider's response names no model", field="model")
    return cast(Counts, tuple(int(n) for n in columns)), extra or None, model


def validate_event(raw: Any, now: datetime, limits: EventLimits) -> EventIn:
    """One event, or a ``ValidationError`` naming its first field at fault."""
    event = parse(EVENT_SHAPE, raw, whole="event")
    get = event.get
    for name in _TEXT_FIELDS:
        value = get(name)
        if value is not None and not printable(value):
            raise ValidationError(f"{name} must be printable characters", field=name)
    if get("provider_usage") is not None:
        usage, extra, model = _provider_usage(event)
    else:
        if "model" not in event:
            raise ValidationError("model is required", field="model")
        usage, extra = _flat_usage(event)
        model = event["model"]
    created_at, timestamp = _when(event, now, limits)
    return EventIn(
        event["event_id"],
        event["api_key_hash"],
        event["provider"],
        model,
        *usage,
        extra,
        get("usage_flag"),
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

    events: list[Any] = Field(
        min_length=1,
        description="at most MAX_BATCH_EVENTS (413 beyond)",
        json_schema_extra={"items": {"$ref": f"#/components/schemas/{EVENT_SCHEMA}"}},
    )
