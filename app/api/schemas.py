"""The HTTP request shapes besides the ingest ones (``app/ingest/validation.py``).

Each is declared once: the views parse with it and ``/openapi.json`` renders it.
"""

from __future__ import annotations

from datetime import date
from typing import Annotated

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictStr,
    StringConstraints,
    WithJsonSchema,
)

from app.errors import ValidationError
from app.shapes import text


def _address(value: str) -> str:
    if "@" not in value:
        raise ValidationError("email is not an address", field="email")
    return value


class CustomerCreate(BaseModel):
    """Onboarding (admin): the raw key is hashed at once, never stored or sent on."""

    model_config = ConfigDict(extra="forbid")

    email: Annotated[text(320), AfterValidator(_address)] = Field(
        json_schema_extra={"format": "email"}
    )
    name: text(200)
    api_key: text(512)
    company: text(200) | None = None


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
