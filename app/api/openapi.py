"""``GET /openapi.json``: the OpenAPI 3.1 document, rendered from the operations'
declarations (``app.contract``)."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, current_app

from app.contract import Media, openapi_document, operation

openapi = Blueprint("openapi", __name__)


@operation(
    openapi,
    "GET",
    "/openapi.json",
    summary="This document",
    answers={200: Media(("application/json",))},
)
def spec() -> dict[str, Any]:
    return openapi_document(current_app, "usage-billing", "0.1.0")
