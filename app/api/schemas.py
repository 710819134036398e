"""The HTTP request shapes besides the ingest ones (``app/ingest/validation.py``).

Each is declared once: the views parse with it and ``/openapi.json`` renders it.
"""

from __future__ import annotations

from typing import Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
)

from app.shapes import CalendarDate, text


class PortalRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    return_url: text(2000) = Field(
        description="an absolute http(s) URL on an allowed origin",
        json_schema_extra={"format": "uri"},
    )


class UsageQuery(BaseModel):
    """``GET /v1/billing/usage``'s query: each parameter once, as YYYY-MM-DD."""

    model_config = ConfigDict(extra="forbid")

    start_date: CalendarDate
    end_date: CalendarDate
    group_by: Literal["key"] | None = Field(
        default=None, description="key: each day's models per API key (by id and label)"
    )
