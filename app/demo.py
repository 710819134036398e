"""A stand-in ``/v1/execute`` for the demo: answers like the metered API does.

Enabled only with ``DEMO_EXECUTE_ENDPOINT=true``, so the embedded demo shows a
metered call becoming a priced row without the real code-generation API.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from flask import Blueprint, request

demo_execute = Blueprint("demo_execute", __name__)


@demo_execute.post("/v1/execute")
def execute() -> dict[str, Any]:
    started = time.perf_counter()
    body = request.get_json(silent=True) or {}
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
