"""The HTTP request shapes besides the ingest ones (``app/ingest/validation.py``).

Each is declared once: the views parse with it and ``/openapi.json`` renders it.
"""

from __future__ import annotations

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
)

from app.shapes import text


class PortalRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    return_url: text(2000) = Field(
        description="an absolute http(s) URL on an allowed origin",
        json_schema_extra={"format": "uri"},
    )
