"""What metering adds to ``/v1/execute`` when the API passes on what the model provider
returned: Anthropic's own JSON response (its usage object sent on for the worker to
read), and its stream of server-sent events (passed through and scanned as it goes).

The stand-in ``/v1/execute`` relays each call to a fake provider serving responses
built with Anthropic's SDK (``tests/provider_responses.py``), once with the
middleware off and once on, calls alternating between the two stacks so that both
meet the machine in the same phase. A stream is timed to its first byte (what its
client waits for) and to its last.
"""

from __future__ import annotations

import json
import statistics
from typing import Any

from bench.load import alternating_calls
from bench.stack import Run, Stack, log

ORDER = 31
REQUESTS = 3000
SHAPES = {"json": "anthropic-cached", "stream": "anthropic-stream"}


def _ms(values: list[float], cut: int) -> float:
    return round(statistics.quantiles(values, n=100)[cut - 1] * 1000, 3)


def run(run: Run, results: dict[str, Any]) -> None:
    from tests.fake_provider import FakeProvider
    from tests.provider_responses import scenarios

    log("metering overhead with a provider's response and stream: middleware off and on")
    provider = FakeProvider(scenarios()).start()
    stacks = []
    try:
        for middleware, port in ((False, 8716), (True, 8717)):
            stack = Stack(run, middleware=middleware, port=port, DEMO_PROVIDER_URL=provider.url)
            stack.start_api(workers=1)
            if middleware:
                stack.start_worker()
            stacks.append(stack)
        targets = [(8716, "bench-key-1"), (8717, "bench-key-1")]
        figures: dict[str, Any] = {}
        for shape, scenario in SHAPES.items():
            body = json.dumps({"scenario": scenario, "provider": "anthropic"}).encode()
            alternating_calls(targets, 300, f"warming up, {shape}", body)
            off, on = alternating_calls(targets, REQUESTS, f"{shape} responses", body)
            entry: dict[str, Any] = {}
            for side, calls in (("off", off), ("on", on)):
                totals, firsts = [t for t, _ in calls], [f for _, f in calls]
                entry[side] = {
                    "p50_ms": _ms(totals, 50),
                    "p99_ms": _ms(totals, 99),
                    "first_byte_p50_ms": _ms(firsts, 50),
                    "first_byte_p99_ms": _ms(firsts, 99),
                }
            entry["overhead_p99_ms"] = round(entry["on"]["p99_ms"] - entry["off"]["p99_ms"], 3)
            entry["first_byte_overhead_p50_ms"] = round(
                entry["on"]["first_byte_p50_ms"] - entry["off"]["first_byte_p50_ms"], 3
            )
            figures[shape] = entry
        results["provider_metering"] = figures
    finally:
        for stack in stacks:
            stack.stop()
        provider.stop()


def headline(results: dict[str, Any]) -> dict[str, Any]:
    met = results.get("provider_metering", {})
    return {
        "provider_json_overhead_p99_ms": met.get("json", {}).get("overhead_p99_ms"),
        "stream_overhead_p99_ms": met.get("stream", {}).get("overhead_p99_ms"),
        "stream_first_byte_overhead_p50_ms": met.get("stream", {}).get(
            "first_byte_overhead_p50_ms"
        ),
    }


def rows(results: dict[str, Any]) -> list[tuple[str, Any, str]]:
    met = results.get("provider_metering")
    if not met:
        return []
    json_, stream = met["json"], met["stream"]
    return [
        (
            "provider JSON p99 off/on (ms)",
            f"{json_['off']['p99_ms']} / {json_['on']['p99_ms']}",
            "",
        ),
        ("middleware overhead p99, provider JSON (ms)", json_["overhead_p99_ms"], "<= 2"),
        (
            "stream p99 off/on (ms)",
            f"{stream['off']['p99_ms']} / {stream['on']['p99_ms']}",
            "",
        ),
        ("middleware overhead p99, stream (ms)", stream["overhead_p99_ms"], "<= 2"),
        (
            "stream first byte p50 off/on (ms)",
            f"{stream['off']['first_byte_p50_ms']} / {stream['on']['first_byte_p50_ms']}",
            "unchanged within noise",
        ),
    ]
