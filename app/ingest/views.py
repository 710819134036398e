"""``POST /v1/usage/events``: batches of usage events from other services."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, current_app, request

from app.errors import PayloadTooLarge
from app.ingest.accept import accept_batch
from app.ingest.meter import outbox_for
from app.ingest.validation import EventBatch, EventLimits
from app.security import require_token
from app.shapes import json_body, parse

ingest = Blueprint("ingest", __name__)


@ingest.post("/v1/usage/events")
def post_events() -> tuple[dict[str, Any], int]:
    settings = current_app.config["SETTINGS"]
    require_token(request, settings.service_token, "service")
    events = parse(EventBatch, json_body(request), whole="events").events
    if len(events) > settings.max_batch_events:
        raise PayloadTooLarge(
            f"at most {settings.max_batch_events} events per batch", field="events"
        )
    outbox = outbox_for(current_app._get_current_object())  # type: ignore[attr-defined]
    result = accept_batch(events, outbox, EventLimits.from_settings(settings))
    body = result.as_json()
    if result.accepted or result.duplicates:
        return body, 202
    first = next(r for r in result.results if r["status"] == "rejected")
    body["error"] = {
        "code": "invalid_request",
        "message": "no event in the batch is valid",
        "field": first["error"]["field"],
    }
    return body, 400
