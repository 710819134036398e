"""Provider performance per provider and model: calls, error rate by status, latency
percentiles and output tokens per second, from the hourly rollup's sums and latency
buckets (never from events).

A percentile is found in the bucket holding its rank and placed inside it
geometrically (the buckets are log-spaced), so it is an estimate within the
bucket's width: ±19 % (``app/ingest/latency.py``). Tokens per second are the
timed calls' output tokens over their summed durations.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from app.analytics.usage import UsageRequest, rollup_rows
from app.customers.models import ApiKey
from app.ingest.latency import LATENCY_BOUNDS, LATENCY_COLUMNS

SUCCESS = "success"
PERCENTILES = (50, 95, 99)
_SUMS = ("events", "timed_events", "execution_ms", "timed_tokens_output", *LATENCY_COLUMNS)


def percentile(counts: Sequence[int], q: float) -> float | None:
    """The ``q``-th percentile (0–100) of durations counted in the latency buckets."""
    total = sum(counts)
    if total == 0:
        return None
    rank = q / 100 * total
    seen = 0
    for index, count in enumerate(counts):
        if count and seen + count >= rank:
            share = (rank - seen) / count
            if index == 0:  # from zero to the first bound: linear
                return float(LATENCY_BOUNDS[0]) * share
            low = float(LATENCY_BOUNDS[index - 1])
            if index == len(LATENCY_BOUNDS):  # past the last bound: no upper end
                return low
            high = float(LATENCY_BOUNDS[index])
            return low * math.pow(high / low, share)
        seen += count
    return float(LATENCY_BOUNDS[-1])


def _figure(value: float | None) -> float | None:
    """Four significant digits: the estimate is no finer than that."""
    return None if value is None else float(f"{value:.4g}")


@dataclass
class ModelPerformance:
    provider: str
    model: str
    statuses: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    timed: int = 0
    execution_ms: int = 0
    timed_tokens_output: int = 0
    buckets: list[int] = field(default_factory=lambda: [0] * len(LATENCY_COLUMNS))

    @property
    def calls(self) -> int:
        return sum(self.statuses.values())

    def add(self, row: Any) -> None:
        self.statuses[row.status] += int(row.events)
        self.timed += int(row.timed_events)
        self.execution_ms += int(row.execution_ms)
        self.timed_tokens_output += int(row.timed_tokens_output)
        for index, name in enumerate(LATENCY_COLUMNS):
            self.buckets[index] += int(getattr(row, name))

    def as_json(self) -> dict[str, Any]:
        errors = self.calls - self.statuses.get(SUCCESS, 0)
        seconds = Decimal(self.execution_ms) / 1000
        return {
            "provider": self.provider,
            "model": self.model,
            "calls": self.calls,
            "statuses": dict(sorted(self.statuses.items())),
            "error_rate": _figure(errors / self.calls) if self.calls else None,
            "timed_calls": self.timed,
            "latency_seconds": {f"p{q}": _figure(percentile(self.buckets, q)) for q in PERCENTILES}
            | {"mean": _figure(float(seconds) / self.timed) if self.timed else None},
            "output_tokens_per_second": (
                _figure(float(self.timed_tokens_output / seconds)) if seconds else None
            ),
        }


def performance(keys: list[ApiKey], request: UsageRequest) -> list[dict[str, Any]]:
    """Each provider and model the keys used in the range, busiest first."""
    grouped = UsageRequest(
        request.start,
        request.end,
        "total",
        ("provider", "model", "status"),
        request.filters,
    )
    models: dict[tuple[str, str], ModelPerformance] = {}
    for row in rollup_rows(keys, grouped, _SUMS):
        key = (row.provider, row.model)
        if key not in models:
            models[key] = ModelPerformance(*key)
        models[key].add(row)
    ranked = sorted(models.values(), key=lambda m: (-m.calls, m.provider, m.model))
    return [m.as_json() for m in ranked]
