"""A stand-in ``/v1/execute`` for the demo: answers like the metered API does.

Enabled only with ``DEMO_EXECUTE_ENDPOINT=true``, so the embedded demo shows a
metered call becoming a priced row without the real code-generation API.

With ``DEMO_PROVIDER_URL`` it behaves as the real API does with a model provider:
the request's body goes there, and what comes back (a provider's JSON response,
or its stream of server-sent events) is passed on to the client as it arrives,
unchanged, the call described to the meter (``describe_call``) from the body's
``provider``, ``api_flavor`` and ``task_type``. Without it, it makes up a small
answer of its own.
"""

from __future__ import annotations

import time
import urllib.request
import uuid
from collections.abc import Iterator
from typing import Any

from flask import Blueprint, Response, current_app, request, stream_with_context

from app.ingest.meter import describe_call

demo_execute = Blueprint("demo_execute", __name__)
_UPSTREAM_TIMEOUT_SECONDS = 60
_CHUNK = 64 * 1024


@demo_execute.post("/v1/execute")
def execute() -> Any:
    started = time.perf_counter()
    body = request.get_json(silent=True) or {}
    upstream = current_app.config["SETTINGS"].demo_provider_url
    if upstream:
        return _relay(upstream, body)
    prompt = str(body.get("prompt", ""))
    return {
        "execution_id": uuid.uuid4().hex,
        "task_type": str(body.get("task_type", "code_generation")),
        "status": "success",
        "provider": str(body.get("provider", "openai")),
        "model": str(body.get("model", "gpt-4o")),
        "usage": {"input_tokens": max(1, len(prompt.split())) * 4, "output_tokens": 256},
        "execution_time": round(time.perf_counter() - started, 3),
        "output": "# generated code would be here",
    }


def _relay(upstream: str, body: dict[str, Any]) -> Response:
    """The provider's answer to ``body``, passed through as it comes."""
    describe_call(
        provider=str(body.get("provider", "openai")),
        api_flavor=body.get("api_flavor"),
        execution_id=uuid.uuid4().hex,
        task_type=str(body.get("task_type", "code_generation")),
    )
    call = urllib.request.Request(
        upstream,
        data=request.get_data(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    answer = urllib.request.urlopen(call, timeout=_UPSTREAM_TIMEOUT_SECONDS)  # noqa: S310
    content_type = answer.headers.get("Content-Type", "application/json")
    if not content_type.startswith("text/event-stream"):
        with answer:
            return Response(answer.read(), status=answer.status, content_type=content_type)

    def chunks() -> Iterator[bytes]:
        with answer:
            while chunk := answer.read1(_CHUNK):
                yield chunk

    return Response(stream_with_context(chunks()), status=answer.status, content_type=content_type)
