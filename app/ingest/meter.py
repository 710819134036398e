"""``UsageMeter``: the Flask extension that meters the ``/v1/execute`` routes.

Installed on the API it meters (``UsageMeter(app)``), it reads the usage from
each response, hashes the caller's key, and hands the event to the outbox. It
adds no database work and no network round trip to the request, and it never
fails the request: a metering error is logged and the response goes out.

The usage is taken as the provider sent it (its response, or a body holding the
provider's ``usage`` object beside ``provider`` and ``model``) and read at the
worker by the price source's extractors, or flat in our own field names
(``tokens_input``, …). A streamed response (``text/event-stream``) is passed
through untouched and metered when it ends (``app/ingest/streams.py``). What the
response does not say (the provider of a raw provider response or a stream, the
task) the view declares with ``describe_call``.
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

from celery import Celery
from flask import Flask, Request, Response, g, request

from app.columns import finite_json
from app.config import Settings
from app.ingest import wire
from app.ingest.batch_store import BatchStore
from app.ingest.ledger import recorded_batches
from app.ingest.outbox import Outbox
from app.ingest.provider_usage import response_keys
from app.ingest.streams import MeteredStream, StreamUsage
from app.observability.metrics import EVENTS_ACCEPTED, STREAMS_FLAGGED
from app.pricing.dimensions import COLUMNS
from app.registry import services
from app.security import hash_api_key

log = logging.getLogger("usage_billing.metering")

METERED_PREFIX = "/v1/execute"
RECORD_TASK = "ingest.record_events"
# A body's usage in our own flat names (app/ingest/validation.py), taken as it is.
_FLAT = frozenset({*COLUMNS, "tokens_input_uncached", "usage_extra"})
_STREAM = "text/event-stream"
# The counter's child looked up once, not per call (it follows a fork: prometheus_client
# checks the process id on every increment).
_ACCEPTED = EVENTS_ACCEPTED.labels("middleware")


@dataclass(frozen=True)
class MeteredCall:
    """What a metered view says of its call, for what the response does not say."""

    provider: str | None = None
    model: str | None = None
    api_flavor: str | None = None
    execution_id: str | None = None
    task_type: str | None = None


def describe_call(
    *,
    provider: str | None = None,
    model: str | None = None,
    api_flavor: str | None = None,
    execution_id: str | None = None,
    task_type: str | None = None,
) -> None:
    """Tell the meter about this request's call: needed for a stream or a provider's
    raw response, which carry no ``provider`` of ours; any value given wins over the
    body's."""
    g.metered_call = MeteredCall(provider, model, api_flavor, execution_id, task_type)


def api_key_of(req: Request) -> str | None:
    scheme, _, token = req.headers.get("Authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def _described(body: dict[str, Any]) -> MeteredCall:
    """The view's declaration, completed by the body's own fields."""
    said = g.get("metered_call") or MeteredCall()
    return MeteredCall(
        said.provider or body.get("provider"),
        said.model or body.get("model"),
        said.api_flavor or body.get("api_flavor"),
        said.execution_id or body.get("execution_id"),
        said.task_type or body.get("task_type"),
    )


def _event(
    req: Request, api_key: str, call: MeteredCall, now: datetime, status: str
) -> dict[str, Any]:
    execution_id = call.execution_id
    event: dict[str, Any] = {
        "event_id": f"exec-{execution_id}" if execution_id else f"evt-{uuid.uuid4().hex}",
        "api_key_hash": hash_api_key(api_key),
        "provider": call.provider,
        "timestamp": now.isoformat(),
        "execution_id": execution_id,
        "task_type": call.task_type,
        "status": status,
        "metadata": {"path": req.path},
    }
    if call.model is not None:
        event["model"] = call.model
    if call.api_flavor is not None:
        event["api_flavor"] = call.api_flavor
    if "budget_call" in g:  # the worker releases the call's reservation by it
        event["metadata"]["budget_call"] = g.budget_call
        if "tokens_held" in g:  # and settles the tokens it reserved under a rate limit
            event["metadata"]["tokens_held"] = g.tokens_held
    return event


@lru_cache(maxsize=256)
def _usage_keys(provider: str | None) -> tuple[str, ...]:
    return response_keys(provider or "")


def event_from_response(
    req: Request, api_key: str, resp: Response, now: datetime
) -> dict[str, Any] | None:
    """The usage event of one metered JSON response, or None when it reports no usage."""
    body = resp.get_json(silent=True) if resp.is_json else None
    if not isinstance(body, dict):
        return None
    usage = body.get("usage")
    call = _described(body)
    event = _event(req, api_key, call, now, body.get("status") or _status(resp))
    event["metadata"]["http_status"] = resp.status_code
    event["execution_time"] = finite_json(body.get("execution_time"))
    if isinstance(usage, dict) and _FLAT.intersection(usage):
        event.update({k: finite_json(v) for k, v in usage.items() if k in _FLAT})
        return event
    provider_usage = {k: finite_json(body[k]) for k in _usage_keys(call.provider) if k in body}
    if not any(isinstance(value, dict) for value in provider_usage.values()):
        return None  # no usage at all: a call that used nothing billable
    event["provider_usage"] = provider_usage
    return event


def _status(resp: Response) -> str:
    return "success" if resp.status_code < 400 else "error"


def stream_event(base: dict[str, Any], usage: StreamUsage, seconds: float) -> dict[str, Any]:
    """The event of a stream that ended: its usage as the stream carried it, or none,
    flagged (``usage_flag``) whenever it may fall short of what the provider billed."""
    event = dict(base)
    event.setdefault("execution_time", round(seconds, 3))
    if usage.provider_usage is not None:
        event["provider_usage"] = finite_json(usage.provider_usage)
        event.setdefault("api_flavor", usage.api_flavor)
        if usage.model and "model" not in event:
            event["model"] = usage.model
    else:
        event.pop("api_flavor", None)
        event.update(tokens_input=0, tokens_output=0)
        event.setdefault("model", "unknown")
    if not usage.complete:
        event["usage_flag"] = "stream_without_usage" if usage.ended else "stream_cut_off"
        STREAMS_FLAGGED.labels(event["usage_flag"]).inc()
    return event


def make_outbox(
    app: Flask, settings: Settings, celery_app: Celery, store: BatchStore | None
) -> Outbox:
    """The app's one outbox: the metering middleware and the batch endpoint share it."""

    def publish(batch_id: str, events: list[dict[str, Any]], accepted_at: float | None) -> None:
        if store is not None:
            store.put(batch_id, events)  # the message then carries only the id
        celery_app.send_task(
            RECORD_TASK,
            args=[events if store is None else None],
            kwargs={"batch_id": batch_id, "accepted_at": accepted_at},
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

    return Outbox(
        settings.spool_dir,
        publish,
        recorded,
        queue_depth,
        batch_size=settings.meter_batch_size,
        flush_ms=settings.meter_flush_ms,
        redeliver_after=settings.meter_redeliver_after_seconds,
    )


class UsageMeter:
    def __init__(self, app: Flask | None = None) -> None:
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        app.after_request(self._meter)

    @staticmethod
    def _meter(resp: Response) -> Response:
        # The request proxy resolved once: each attribute read through it costs a
        # context lookup, and this runs on every metered call.
        req: Request = request._get_current_object()  # type: ignore[attr-defined]
        if not req.path.startswith(METERED_PREFIX):
            return resp
        try:
            api_key = api_key_of(req)
            if api_key is None:  # nothing to bill; admission held nothing for it
                return resp
            outbox = services().outbox
            if resp.mimetype == _STREAM and resp.is_streamed:
                return _metered_stream(req, api_key, resp, outbox)
            event = event_from_response(req, api_key, resp, datetime.now(UTC))
            if event is None:
                if "release_unmetered" in g:  # what admission held for a call now unbilled
                    g.release_unmetered()
            else:
                outbox.append([event])
                _ACCEPTED.inc()
        except Exception:
            log.exception("metering failed; the request is served regardless")
        return resp


def _metered_stream(req: Request, api_key: str, resp: Response, outbox: Outbox) -> Response:
    """Wrap the stream's body; its event goes to the outbox when the server closes it."""
    base = _event(req, api_key, _described({}), datetime.now(UTC), _status(resp))
    base["metadata"]["http_status"] = resp.status_code
    started = time.monotonic()

    def on_end(usage: StreamUsage) -> None:
        try:
            outbox.append([stream_event(base, usage, time.monotonic() - started)])
            _ACCEPTED.inc()
        except Exception:
            log.exception("metering a stream failed; the stream was served regardless")

    resp.response = MeteredStream(resp.response, on_end)
    return resp
