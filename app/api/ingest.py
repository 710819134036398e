"""``POST /v1/usage/events``: batches of usage events from other services."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, current_app, request

from app.api import json_body
from app.errors import PayloadTooLarge, ValidationError
from app.metering import outbox_for
from app.security import require_token
from app.services.ingest import accept_batch

ingest = Blueprint("ingest", __name__)


@ingest.post("/v1/usage/events")
def post_events() -> tuple[dict[str, Any], int]:
    settings = current_app.config["SETTINGS"]
    require_token(request, settings.service_token, "service")
    body = json_body(request)
    events = body.get("events") if isinstance(body, dict) else None
    if not isinstance(events, list) or not events:
        raise ValidationError('"events" must be a non-empty list', field="events")
    if len(events) > settings.max_batch_events:
        raise PayloadTooLarge(
            f"at most {settings.max_batch_events} events per batch", field="events"
        )
    result = accept_batch(events, outbox_for(current_app._get_current_object()))  # type: ignore[attr-defined]
    status = 202 if result["accepted"] or result["duplicates"] else 400
    if status == 400:
        first = next(r for r in result["results"] if r["status"] == "rejected")
        result["error"] = {
            "code": "invalid_request",
            "message": "no event in the batch is valid",
            "field": first["error"]["field"],
        }
    return result, status
