"""``UsageMeter``: the Flask extension that meters the ``/v1/execute`` routes.

Installed on the API it meters (``UsageMeter(app)``), it reads the usage from
each response, hashes the caller's key, and hands the event to the outbox. It
adds no database work and no network round trip to the request, and it never
fails the request: a metering error is logged and the response goes out.
"""

from __future__ import annotations

import logging
import math
import uuid
from datetime import UTC, datetime
from typing import Any

from flask import Flask, Request, Response, current_app, g, request

from app.ingest import wire
from app.ingest.batch_store import batch_store
from app.ingest.ledger import recorded_batches
from app.ingest.outbox import Outbox
from app.observability.metrics import EVENTS_ACCEPTED
from app.security import hash_api_key

log = logging.getLogger("usage_billing.metering")

METERED_PREFIX = "/v1/execute"
RECORD_TASK = "ingest.record_events"
# Token counts as providers name them: ours, Anthropic's and OpenAI's.
_INPUT_KEYS = ("tokens_input", "input_tokens", "prompt_tokens")
_OUTPUT_KEYS = ("tokens_output", "output_tokens", "completion_tokens")
_CACHE_KEYS = ("tokens_cache_read", "cache_read_input_tokens", "cached_tokens")


def _first(source: dict[str, Any], keys: tuple[str, ...]) -> Any:
    for key in keys:
        if key in source:
            return source[key]
    return None


def api_key_of(req: Request) -> str | None:
    scheme, _, token = req.headers.get("Authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def _number(value: Any) -> Any:
    """A number from the response as it must reach the worker. orjson writes NaN and
    Infinity as null (app/ingest/wire.py), which would turn a bad cache-token count into 0
    and a bad execution time into none: as text, the worker parks the event naming
    the field."""
    return str(value) if isinstance(value, float) and not math.isfinite(value) else value


def event_from_response(req: Request, resp: Response, now: datetime) -> dict[str, Any] | None:
    """The usage event of one metered response, or None when it used no metered tokens."""
    api_key = api_key_of(req)
    body = resp.get_json(silent=True) if resp.is_json else None
    if api_key is None or not isinstance(body, dict):
        return None
    usage = body.get("usage") if isinstance(body.get("usage"), dict) else body
    tokens_input, tokens_output = _first(usage, _INPUT_KEYS), _first(usage, _OUTPUT_KEYS)
    if tokens_input is None and tokens_output is None:
        return None
    execution_id = body.get("execution_id")
    event_id = f"exec-{execution_id}" if execution_id else f"evt-{uuid.uuid4().hex}"
    return {
        "event_id": event_id,
        "api_key_hash": hash_api_key(api_key),
        "provider": body.get("provider"),
        "model": body.get("model"),
        "tokens_input": _number(tokens_input or 0),
        "tokens_output": _number(tokens_output or 0),
        "tokens_cache_read": _number(_first(usage, _CACHE_KEYS) or 0),
        "timestamp": now.isoformat(),
        "execution_id": execution_id,
        "task_type": body.get("task_type"),
        "status": body.get("status") or ("success" if resp.status_code < 400 else "error"),
        "execution_time": _number(body.get("execution_time")),
        "metadata": {"http_status": resp.status_code, "path": req.path},
    }


def outbox_for(app: Flask) -> Outbox:
    """The app's one outbox: the metering middleware and the batch endpoint share it."""
    outbox = app.extensions.get("usage_outbox")
    if outbox is None:
        settings = app.config["SETTINGS"]
        celery_app = app.extensions["celery"]
        store = batch_store(app)

        def publish(batch_id: str, events: list[dict[str, Any]]) -> None:
            if store is not None:
                store.put(batch_id, events)  # the message then carries only the id
            celery_app.send_task(
                RECORD_TASK,
                args=[events if store is None else None],
                kwargs={"batch_id": batch_id},
                retry=False,
                serializer=wire.SERIALIZER,
                # What Flower shows; Celery's own repr of a batch costs more
                # than the rest of the publish together.
                argsrepr=f"[<{len(events)} events>]",
                kwargsrepr=f"{{'batch_id': '{batch_id}'}}",
            )

        def recorded(batch_ids: list[str]) -> set[str]:
            with app.app_context():
                return recorded_batches(batch_ids)

        def queue_depth() -> int:
            # Declared as Celery declares it (the same arguments), since a passive
            # declare of an empty Redis queue answers "not found".
            queue = celery_app.amqp.queues[celery_app.conf.task_default_queue]
            with celery_app.connection_for_read() as conn:
                declared = queue(conn.default_channel).queue_declare()
            return int(declared.message_count)

        outbox = Outbox(
            settings.spool_dir,
            publish,
            recorded,
            queue_depth,
            batch_size=settings.meter_batch_size,
            flush_ms=settings.meter_flush_ms,
            redeliver_after=settings.meter_redeliver_after_seconds,
        )
        app.extensions["usage_outbox"] = outbox
    return outbox


class UsageMeter:
    def __init__(self, app: Flask | None = None) -> None:
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        outbox_for(app)
        app.after_request(self._meter)

    @staticmethod
    def _meter(resp: Response) -> Response:
        if not request.path.startswith(METERED_PREFIX):
            return resp
        try:
            event = event_from_response(request, resp, datetime.now(UTC))
            if event is None:
                if "release_unmetered" in g:  # what admission held for a call now unbilled
                    g.release_unmetered()
            else:
                if "budget_call" in g:  # the worker releases the call's reservation by it
                    event["metadata"]["budget_call"] = g.budget_call
                outbox_for(current_app._get_current_object()).append([event])  # type: ignore[attr-defined]
                EVENTS_ACCEPTED.labels("middleware").inc()
        except Exception:
            log.exception("metering failed; the request is served regardless")
        return resp
