"""Declaring request shapes with pydantic, and turning its errors into ours.

Shared by every shape (the event in ``app/ingest/validation.py``, the HTTP
bodies beside their views, Stripe's events in ``app/billing``), so each
is declared once and ``/openapi.json`` renders the same declarations.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import date, timedelta
from decimal import Decimal
from typing import Annotated, Any, TypeVar

from annotated_types import GroupedMetadata
from flask import Request, request
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    Field,
    GetCoreSchemaHandler,
    GetJsonSchemaHandler,
    Strict,
    StringConstraints,
    TypeAdapter,
    ValidationInfo,
    WithJsonSchema,
)
from pydantic import ValidationError as PydanticError
from pydantic_core import core_schema

from app.errors import NotFound, PayloadTooLarge, UnsupportedMediaType, ValidationError

Model = TypeVar("Model", bound=BaseModel)
View = TypeVar("View", bound=Callable[..., Any])


def parse(
    shape: type[Model] | TypeAdapter[Any], data: Any, context: Any = None, whole: str = "body"
) -> Any:
    """``data`` as ``shape``, or a ``ValidationError`` naming the first field at fault.

    ``whole`` names the field when the data itself is wrong (not an object).
    """
    try:
        if isinstance(shape, TypeAdapter):
            return shape.validate_python(data, context=context)
        return shape.model_validate(data, context=context)
    except PydanticError as exc:
        first = exc.errors(include_url=False, include_context=False, include_input=False)[0]
        field = str(first["loc"][0]) if first["loc"] else whole
        raise ValidationError(f"{field}: {first['msg']}", field=field) from None


# What a name may not hold, as Unicode 14 (Python 3.11's ``unicodedata``) lists them:
# controls (Cc; PostgreSQL refuses NUL), format characters (Cf: bidi overrides,
# zero-width ones, which only ever mislead), surrogates (Cs), and line and paragraph
# separators (Zl, Zp). tests/test_bad_input.py holds the list to unicodedata.
UNPRINTABLE = (
    (0x0000, 0x001F), (0x007F, 0x009F), (0x00AD, 0x00AD), (0x0600, 0x0605),
    (0x061C, 0x061C), (0x06DD, 0x06DD), (0x070F, 0x070F), (0x0890, 0x0891),
    (0x08E2, 0x08E2), (0x180E, 0x180E), (0x200B, 0x200F), (0x2028, 0x202E),
    (0x2060, 0x2064), (0x2066, 0x206F), (0xD800, 0xDFFF), (0xFEFF, 0xFEFF),
    (0xFFF9, 0xFFFB), (0x110BD, 0x110BD), (0x110CD, 0x110CD), (0x13430, 0x13438),
    (0x1BCA0, 0x1BCA3), (0x1D173, 0x1D17A), (0xE0001, 0xE0001), (0xE0020, 0xE007F),
)  # fmt: skip


def _in_class(code: int) -> str:
    """A code point as a regular expression's class writes it, alike in Python and in
    JavaScript (``\\uXXXX`` in the BMP; beyond it, the character itself)."""
    return f"\\u{code:04x}" if code <= 0xFFFF else chr(code)


_ALLOWED = (
    "[^"
    + "".join(
        _in_class(low) + ("" if high == low else "-" + _in_class(high)) for low, high in UNPRINTABLE
    )
    + "]"
)
# Trimmed and not empty (``trimmed``), of allowed characters only: the document's
# pattern, and the check of every name.
PRINTABLE = rf"^(?=.*\S){_ALLOWED}+$"
_PRINTABLE = re.compile(_ALLOWED + "*")


def printable(value: str) -> bool:
    return _PRINTABLE.fullmatch(value) is not None


def _printable(value: str, info: ValidationInfo) -> str:
    if not printable(value):
        raise ValidationError(
            f"{info.field_name} must be printable characters", field=info.field_name
        )
    return value


@dataclass(frozen=True)
class Text(GroupedMetadata):
    """``Annotated[str, Text(n)]``: a trimmed, non-empty string of at most ``n``
    printable characters. With ``checked`` off, whether it is printable is the
    caller's to check (the event checks its names in one pass); the document says
    it must be either way."""

    max_length: int
    checked: bool = True

    def __iter__(self) -> Iterator[Any]:
        yield Strict()
        yield StringConstraints(strip_whitespace=True, min_length=1, max_length=self.max_length)
        yield Field(json_schema_extra={"pattern": PRINTABLE})
        if self.checked:
            yield AfterValidator(_printable)


def parse_query(shape: type[Model]) -> Model:
    """The query string as ``shape``, each parameter given once (a repeat is a 400)."""
    given = request.args.to_dict(flat=False)
    for name, values in given.items():
        if len(values) > 1:
            raise ValidationError(f"{name} is given more than once", field=name)
    return parse(shape, {name: values[0] for name, values in given.items()}, whole="query")


def json_body(request: Request) -> Any:
    """The parsed JSON body, or a 4xx naming what is wrong with it.

    A body sent in chunks (no ``Content-Length``) is cut at ``MAX_BODY_BYTES`` as it
    is read: one that fills the limit is a 413, as with a length, not a 400 for the
    JSON cut short. A body nested deeper than the parser's stack is read with the
    part too deep cut off (``_cut_deep``), so validation refuses the one value that
    nests too deep, naming its field, and not the whole batch.
    """
    if not request.is_json:
        raise UnsupportedMediaType("Content-Type must be application/json", field="Content-Type")
    data = request.get_data(cache=True)
    limit = request.max_content_length
    if request.content_length is None and limit is not None and len(data) >= limit:
        raise PayloadTooLarge(f"the body is larger than {limit} bytes", field="body")
    try:
        try:
            body = json.loads(data)
        except RecursionError:
            body = json.loads(_cut_deep(data.decode("utf-8")))
    except (ValueError, RecursionError):
        body = None
    if body is None:
        raise ValidationError("the body is not valid JSON", field="body")
    return body


# A JSON string (with its escapes), or a bracket: the tokens the depth cut looks at.
_TOKENS = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{}]')
_MAX_PARSED_DEPTH = 64  # far deeper than any value we take; far shallower than the stack


def _cut_deep(text: str) -> str:
    """JSON text with every container nested past ``_MAX_PARSED_DEPTH`` emptied: what
    is left parses, and holds the too-deep value at the depth where it was cut, so
    the check of that value's own depth refuses it."""
    kept, start, level, cut_at = [], 0, 0, -1
    for token in _TOKENS.finditer(text):
        mark = token.group()
        if mark[0] == '"':
            continue
        if mark in "[{":
            level += 1
            if level == _MAX_PARSED_DEPTH + 1 and cut_at < 0:
                cut_at = token.start()
        else:
            if level == _MAX_PARSED_DEPTH + 1 and cut_at >= 0:
                kept.append(text[start:cut_at] + ("[]" if mark == "]" else "{}"))
                start, cut_at = token.end(), -1
            level -= 1
    kept.append(text[start:])
    return "".join(kept)


MAX_ID = 2**31 - 1  # an id column's range: beyond it, no such row


def _integral(value: Any) -> Any:
    return int(value) if isinstance(value, float) and value.is_integer() else value


@dataclass(frozen=True)
class Whole(GroupedMetadata):
    """``Annotated[int, Whole(lo, hi)]``: an integer of a JSON body in [lo, hi]. As JSON
    Schema's ``integer`` has it, ``35.0`` is one (and ``true`` or ``"35"`` are not)."""

    minimum: int
    maximum: int

    def __iter__(self) -> Iterator[Any]:
        yield BeforeValidator(_integral)
        yield Strict()
        yield Field(ge=self.minimum, le=self.maximum)
        yield WithJsonSchema({"type": "integer", "minimum": self.minimum, "maximum": self.maximum})


Id = Annotated[int, Whole(1, MAX_ID)]


def path_id(value: str, field: str) -> int:
    """An id from the URL's path: digits within an id's range, else a 404 naming it."""
    if not value.isascii() or not value.isdigit() or not 0 < int(value) <= MAX_ID:
        raise NotFound(f"no such {field.removesuffix('_id')}", field=field)
    return int(value)


@dataclass(frozen=True)
class DecimalText:
    """``Annotated[Decimal, DecimalText(...)]``: an exact Decimal read from a decimal
    string (never a JSON number, which would pass through a float), written back as
    one. ``above_zero`` refuses zero; pydantic-core's regular expressions have no
    look-ahead, so the document's pattern says it and a check does it."""

    description: str
    above_zero: bool = False
    most: Decimal | None = None  # the largest the store holds, where it holds less

    def __get_pydantic_core_schema__(
        self, source: Any, handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        return core_schema.with_info_after_validator_function(
            self._read,
            core_schema.str_schema(strict=True, pattern=_DECIMAL),
            serialization=core_schema.plain_serializer_function_ser_schema(
                lambda value: format(value, "f"), return_schema=core_schema.str_schema()
            ),
        )

    def __get_pydantic_json_schema__(
        self, schema: core_schema.CoreSchema, handler: GetJsonSchemaHandler
    ) -> dict[str, Any]:
        pattern = _POSITIVE_DECIMAL if self.above_zero else _DECIMAL
        return {"type": "string", "pattern": pattern, "description": self.description}

    def _read(self, value: str, info: ValidationInfo) -> Decimal:
        amount = Decimal(value)
        if self.above_zero and amount <= 0:
            raise ValidationError(f"{info.field_name} must be above zero", field=info.field_name)
        if self.most is not None and amount > self.most:
            raise ValidationError(
                f"{info.field_name} is at most {self.most}", field=info.field_name
            )
        return amount


_DECIMAL = r"^\d{1,12}(\.\d{1,12})?$"
_POSITIVE_DECIMAL = r"^(?=.*[1-9])\d{1,12}(\.\d{1,12})?$"
Amount = Annotated[Decimal, DecimalText("a decimal string, at least zero, at most 12 places")]
"""Money and quantities as people write them: a decimal string, read as an exact Decimal."""
PositiveAmount = Annotated[
    Decimal, DecimalText("a decimal string above zero, at most 12 places", above_zero=True)
]
"""An ``Amount`` above zero: a limit."""


def _calendar_date(value: str) -> date:
    """A day whose next day the calendar still has: a range ending on it ends at the
    next midnight, which 9999-12-31 has none of."""
    day = date.fromisoformat(value)
    if day >= date.max:
        raise ValueError(f"dates go up to {date.max - timedelta(days=1)}")
    return day


@dataclass(frozen=True)
class CalendarDay:
    """``Annotated[date, CalendarDay()]``: a day written YYYY-MM-DD (not an ISO week)."""

    def __get_pydantic_core_schema__(
        self, source: Any, handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        return core_schema.no_info_after_validator_function(
            _calendar_date, core_schema.str_schema(strict=True, pattern=_DAY)
        )

    def __get_pydantic_json_schema__(
        self, schema: core_schema.CoreSchema, handler: GetJsonSchemaHandler
    ) -> dict[str, Any]:
        return {"type": "string", "format": "date", "pattern": _DAY}


_DAY = r"^\d{4}-\d{2}-\d{2}$"
CalendarDate = Annotated[date, CalendarDay()]
