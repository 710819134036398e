"""What metering adds to a ``/v1/execute`` call: the same requests to an API with the
middleware off and one with it on (and its worker running), both up at once, one
client alternating call by call on a kept-alive connection to each.

Run one after the other, the two sides met the machine minutes apart; on this
machine a phase change outweighs the difference measured (issue 31)."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from matplotlib.ticker import ScalarFormatter

from bench.load import alternating_latencies
from bench.plots import figure
from bench.stack import Run, Stack, log

ORDER = 30
REQUESTS = 10000
SIDES = (("off", 8712), ("on", 8713))


def run(run: Run, results: dict[str, Any]) -> None:
    log("metering overhead: /v1/execute with the middleware off and on, alternating")
    stacks = []
    for side, port in SIDES:
        stack = Stack(run, middleware=side == "on", port=port)
        stack.start_api(workers=1)
        if side == "on":
            stack.start_worker()
        stacks.append(stack)
    targets = [(port, "bench-key-1") for _, port in SIDES]
    alternating_latencies(targets, 500, "warming up, middleware off and on")
    measured = alternating_latencies(targets, REQUESTS, "requests, middleware off and on")
    for stack in stacks:
        stack.stop()
    figures: dict[str, Any] = {}
    for (side, _), lat in zip(SIDES, measured, strict=True):
        figures[side] = {
            "p50_ms": round(statistics.median(lat) * 1000, 3),
            "p99_ms": round(statistics.quantiles(lat, n=100)[98] * 1000, 3),
            # The distribution, as 199 cut points (every half percentile), for the plot.
            "quantiles_ms": [round(q * 1000, 4) for q in statistics.quantiles(lat, n=200)],
        }
    figures["overhead_p50_ms"] = round(figures["on"]["p50_ms"] - figures["off"]["p50_ms"], 3)
    figures["overhead_p99_ms"] = round(figures["on"]["p99_ms"] - figures["off"]["p99_ms"], 3)
    results["metering"] = figures


def headline(results: dict[str, Any]) -> dict[str, Any]:
    return {"middleware_p99_overhead_ms": results.get("metering", {}).get("overhead_p99_ms")}


def rows(results: dict[str, Any]) -> list[tuple[str, Any, str]]:
    met = results.get("metering")
    if not met:
        return []
    return [
        ("execute p50 off/on (ms)", f"{met['off']['p50_ms']} / {met['on']['p50_ms']}", ""),
        ("execute p99 off/on (ms)", f"{met['off']['p99_ms']} / {met['on']['p99_ms']}", ""),
        ("middleware overhead p99 (ms)", met["overhead_p99_ms"], "<= 1"),
    ]


def draw(results: dict[str, Any], directory: Path) -> list[Path]:
    met = results.get("metering", {})
    if "quantiles_ms" not in met.get("on", {}):
        return []
    path = directory / "execute_latency.png"
    title = "/v1/execute latency, metering middleware off and on"
    with figure(path, title, "latency (ms, log scale)", "share of requests at or below") as ax:
        for side in ("off", "on"):
            cuts = met[side]["quantiles_ms"]
            ax.plot(cuts, [(i + 1) / (len(cuts) + 1) for i in range(len(cuts))], label=side)
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(ScalarFormatter())
    return [path]
