"""The HTTP request shapes besides the ingest ones (``app/ingest/validation.py``).

Each is declared once: the views parse with it and ``/openapi.json`` renders it.
"""

from __future__ import annotations

from datetime import date
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictStr,
    StringConstraints,
    WithJsonSchema,
)

from app.shapes import text


class PortalRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    return_url: text(2000) = Field(
        description="an absolute http(s) URL on an allowed origin",
        json_schema_extra={"format": "uri"},
    )


def _calendar_date(value: str) -> date:
    return date.fromisoformat(value)


CalendarDate = Annotated[
    Annotated[StrictStr, StringConstraints(pattern=r"^\d{4}-\d{2}-\d{2}$")],  # not ISO weeks
    AfterValidator(_calendar_date),
    WithJsonSchema({"type": "string", "format": "date", "pattern": r"^\d{4}-\d{2}-\d{2}$"}),
]


class UsageQuery(BaseModel):
    """``GET /v1/billing/usage``'s query: each parameter once, as YYYY-MM-DD."""

    model_config = ConfigDict(extra="forbid")

    start_date: CalendarDate
    end_date: CalendarDate
    group_by: Literal["key"] | None = Field(
        default=None, description="key: each day's models per API key (by id and label)"
    )
