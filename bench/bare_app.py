"""The baseline of the single-request bench: a bare Flask view under gunicorn.

The same worker model as ``make api`` (gthread, the same workers and threads) and an
answer of the demo endpoint's shape, with nothing of ours in between: no key check,
no admission, no metering, no metrics. What it serves in a run is what this machine,
in its mood of the moment, can serve at all, so the metered rate is read beside it.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from flask import Flask, request

app = Flask(__name__)


@app.get("/healthz")
def healthz() -> dict[str, str]:
    return {"status": "ok"}  # what ``bench.stack.wait_until_serving`` asks


@app.post("/v1/execute")
def execute() -> dict[str, Any]:
    started = time.perf_counter()
    body = request.get_json(silent=True) or {}
    return {
        "execution_id": uuid.uuid4().hex,
        "task_type": str(body.get("task_type", "code_generation")),
        "status": "success",
        "provider": "openai",
        "model": "gpt-4o",
        "usage": {"input_tokens": 4, "output_tokens": 256},
        "execution_time": round(time.perf_counter() - started, 3),
        "output": "# generated code would be here",
    }
