"""The analytics endpoints' query strings, each declared once (views parse with them,
``/openapi.json`` renders them)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from annotated_types import GroupedMetadata
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    WithJsonSchema,
    model_validator,
)

from app.shapes import MAX_ID, CalendarDate, Text

Dimension = Literal["model", "provider", "task_type", "status", "key"]
Granularity = Literal["hour", "day", "month", "total"]


def _split(value: Any) -> Any:
    """``a,b`` → ``["a", "b"]``; an empty string is an empty list."""
    if not isinstance(value, str):
        return value
    return [part.strip() for part in value.split(",")] if value.strip() else []


@dataclass(frozen=True)
class CommaList(GroupedMetadata):
    """``Annotated[list[T], CommaList(...)]``: a comma-separated list in one query
    parameter, at most 50 distinct items, each as ``pattern`` (a regular expression)
    has it in the document."""

    description: str
    pattern: str

    def __iter__(self) -> Iterator[Any]:
        listed = rf"^(\s*{self.pattern}\s*(,\s*{self.pattern}\s*){{0,49}})?$"
        yield BeforeValidator(_split)
        yield Field(max_length=50)
        described = f"{self.description} (comma-separated)"
        yield WithJsonSchema({"type": "string", "description": described, "pattern": listed})


_NAME = "[^,]+"  # the names' own pattern (``text``) is each item's, past the split
_ID = r"\d+"


KeyId = Annotated[int, Field(ge=1, le=MAX_ID)]
Name128 = Annotated[str, Text(128)]
Name64 = Annotated[str, Text(64)]
Name32 = Annotated[str, Text(32)]


class DateRange(BaseModel):
    """Two calendar days, the second not before the first."""

    model_config = ConfigDict(extra="forbid")

    start_date: CalendarDate
    end_date: CalendarDate

    @property
    def days(self) -> int:
        """How many days the range holds, both ends counted."""
        return (self.end_date - self.start_date).days + 1

    @model_validator(mode="after")
    def _ordered(self) -> DateRange:
        from app.errors import ValidationError

        if self.end_date < self.start_date:
            raise ValidationError("end_date is before start_date", field="end_date")
        return self


class Filters(BaseModel):
    """Keep only the usage whose field is one of the listed values."""

    model: Annotated[list[Name128], CommaList("only these models", _NAME)] | None = None
    provider: Annotated[list[Name64], CommaList("only these providers", _NAME)] | None = None
    task_type: Annotated[list[Name64], CommaList("only these task types", _NAME)] | None = None
    status: Annotated[list[Name32], CommaList("only these call statuses", _NAME)] | None = None
    key: Annotated[list[KeyId], CommaList("only these API keys, by id", _ID)] | None = None

    def given(self) -> dict[str, tuple[Any, ...]]:
        return {
            name: tuple(dict.fromkeys(values))
            for name in Filters.model_fields
            if (values := getattr(self, name)) is not None
        }


class UsageQuery(DateRange, Filters):
    """``GET /v1/billing/usage``: each parameter once."""

    granularity: Granularity = Field(
        default="day", description="hour, day, month, or total (the whole range as one)"
    )
    group_by: Annotated[
        list[Dimension],
        CommaList(
            "any of model, provider, task_type, status, key",
            "(model|provider|task_type|status|key)",
        ),
    ] = Field(default=["provider", "model"])


class PerformanceQuery(DateRange, Filters):
    """``GET /v1/billing/performance``: per provider and model."""


class RecommendationQuery(BaseModel):
    """``GET /v1/billing/recommendations``: over the last ``days`` full days."""

    model_config = ConfigDict(extra="forbid")

    days: int = Field(default=30, ge=1, le=366)


class ExportQuery(DateRange):
    """``GET /v1/billing/usage/export``."""

    format: Literal["csv", "jsonl"] = "csv"
    customer_id: Annotated[int, Field(ge=1, le=MAX_ID)] | None = Field(
        default=None, description="admin only: one customer's events (default: all)"
    )
