"""CPU per event of checking it (the API does; the worker reads back what the API
checked with ``read_message``, the A/B beside the full check), of reading a
provider's own usage object with the price source's extractor (the worker does it for
the middleware's events), and of pricing it by the source's rules, in this process:
the median of seven runs."""

from __future__ import annotations

import statistics
import timeit
import uuid
from datetime import UTC, datetime
from typing import Any

from bench.load import make_events
from bench.stack import Run

ORDER = 10


def run(run: Run, results: dict[str, Any]) -> None:
    from app.config import Settings
    from app.ingest.validation import EventLimits, read_message, validate_event
    from app.pricing.book import SEED_EFFECTIVE_FROM, PriceBook, price_row
    from app.pricing.catalog import bundled_prices

    now = datetime.now(UTC)
    limits = EventLimits.from_settings(Settings())  # the defaults the stack runs with
    bench_event = make_events(1, 0, now)[0]
    metered = {
        **bench_event,
        "execution_id": uuid.uuid4().hex,
        "execution_time": "1.25",
        "metadata": {"http_status": 200, "path": "/v1/execute/code_generation"},
    }

    def per_event_us(action: Any) -> float:
        runs = [timeit.timeit(action, number=20_000) / 20_000 * 1e6 for _ in range(7)]
        return round(statistics.median(runs), 2)

    from tests.provider_responses import anthropic_message

    message = anthropic_message("claude-sonnet-4-5", 50, 500, 100_000, 2_000)
    provider_event = {
        **{k: v for k, v in metered.items() if not k.startswith("tokens_") and k != "model"},
        "provider": "anthropic",
        "provider_usage": {"model": message.model, "usage": message.usage.model_dump(mode="json")},
    }
    book = PriceBook([price_row(*version, SEED_EFFECTIVE_FROM) for version in bundled_prices()])
    classic = {"input_tokens": 1000, "output_tokens": 500, "cache_read_tokens": 200}
    cached = validate_event(provider_event, now, limits).counts()
    checked = validate_event(metered, now, limits).to_message()
    results["per_event_us"] = {
        "validate_batch_event": per_event_us(lambda: validate_event(bench_event, now, limits)),
        "validate_metered_event": per_event_us(lambda: validate_event(metered, now, limits)),
        "read_checked_message": per_event_us(lambda: read_message(checked, now, limits)),
        "validate_provider_event": per_event_us(
            lambda: validate_event(provider_event, now, limits)
        ),
        "price_by_rules": per_event_us(lambda: book.cost("openai", "gpt-4o", now, classic)),
        "price_cache_writes": per_event_us(
            lambda: book.cost("anthropic", "claude-sonnet-4-5", now, cached)
        ),
        **_lag_observations(),
    }


def _lag_observations() -> dict[str, float]:
    """The worker's lag histogram, per event: observed one by one (prometheus_client's
    ``observe``) and a batch at once (``observe_all``), a batch of 2,000 lags."""
    from prometheus_client import CollectorRegistry, Histogram

    from app.observability.metrics import INGEST_LAG, observe_all

    bounds = INGEST_LAG._upper_bounds[:-1]
    lags = [0.05 * (i % 400) for i in range(2000)]
    each = Histogram("each", "", buckets=bounds, registry=CollectorRegistry())
    batch = Histogram("batch", "", buckets=bounds, registry=CollectorRegistry())

    def one_by_one() -> None:
        for lag in lags:
            each.observe(lag)

    def per_lag_us(action: Any) -> float:
        runs = [timeit.timeit(action, number=50) / 50 / len(lags) * 1e6 for _ in range(7)]
        return round(statistics.median(runs), 3)

    return {
        "lag_observe_each": per_lag_us(one_by_one),
        "lag_observe_batch": per_lag_us(lambda: observe_all(batch, lags)),
    }


def headline(results: dict[str, Any]) -> dict[str, Any]:
    return {"per_event_us": results.get("per_event_us")}


def rows(results: dict[str, Any]) -> list[tuple[str, Any, str]]:
    per = results.get("per_event_us")
    if not per:
        return []
    return [
        (
            "validate an event, batch / metered (us)",
            f"{per['validate_batch_event']} / {per['validate_metered_event']}",
            "",
        ),
        (
            "worker: read a checked metered event, vs its full check (us)",
            f"{per.get('read_checked_message')} vs {per['validate_metered_event']}",
            "",
        ),
        (
            "validate a provider's usage, with extraction (us)",
            per.get("validate_provider_event"),
            "",
        ),
        (
            "price by the source's rules, classic / cache writes (us)",
            f"{per['price_by_rules']} / {per.get('price_cache_writes')}",
            "",
        ),
        (
            "worker: lag histogram per event, one by one / a batch at once (us)",
            f"{per.get('lag_observe_each')} / {per.get('lag_observe_batch')}",
            "A/B, same run",
        ),
    ]
