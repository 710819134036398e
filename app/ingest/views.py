"""``POST /v1/usage/events``: batches of usage events from other services."""

from __future__ import annotations

from typing import Literal

from flask import Blueprint, current_app

from app.contract import SERVICE, Answer, ErrorDetail, operation
from app.errors import PayloadTooLarge
from app.ingest.accept import accept_batch
from app.ingest.validation import EVENT_SCHEMA, EVENT_SHAPE, EventBatch, EventLimits
from app.registry import services

ingest = Blueprint("ingest", __name__)


class Refusal(Answer):
    field: str | None
    message: str


class EventResult(Answer):
    """What became of one event, by its place in the batch."""

    index: int
    event_id: str | None
    status: Literal["accepted", "duplicate", "rejected"]
    error: Refusal | None = None  # a rejected event's


class BatchAnswer(Answer):
    """Each event's result, in the order sent: accepted, duplicate, or rejected."""

    accepted: int
    duplicates: int
    rejected: int
    results: list[EventResult]


class BatchRefused(BatchAnswer):
    """No event of the batch is valid: each one's reason, and the first one's field."""

    error: ErrorDetail


@operation(
    ingest,
    "POST",
    "/v1/usage/events",
    summary="Record a batch of usage events",
    auth=SERVICE,
    body=EventBatch,
    body_field="events",
    schemas={EVENT_SCHEMA: EVENT_SHAPE},
    answers={202: BatchAnswer, 400: BatchRefused},
    errors=(400, 401, 403, 413, 415),
    rules=(
        "Each event is checked on its own: its time at most MAX_EVENT_AGE_DAYS back and"
        " MAX_EVENT_FUTURE_SECONDS ahead, its cached tokens within its input, its model given"
        " unless provider_usage names it. A batch with no valid event is a 400 with each"
        " one's reason."
    ),
)
def post_events(body: EventBatch) -> tuple[dict[str, object], int]:
    settings = current_app.config["SETTINGS"]
    if len(body.events) > settings.max_batch_events:
        raise PayloadTooLarge(
            f"at most {settings.max_batch_events} events per batch", field="events"
        )
    result = accept_batch(body.events, services().outbox, EventLimits.from_settings(settings))
    answer: dict[str, object] = {
        "accepted": result.accepted,
        "duplicates": result.duplicates,
        "rejected": result.rejected,
        "results": result.results,
    }
    if result.accepted or result.duplicates:
        return answer, 202
    first = next(r for r in result.results if r["status"] == "rejected")
    answer["error"] = {
        "code": "invalid_request",
        "message": "no event in the batch is valid",
        "field": first["error"]["field"],
    }
    return answer, 400
