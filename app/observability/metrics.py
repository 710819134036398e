"""Every metric the service exports, declared once. Names start with ``ub_``.

Every series a counter can have is made here at 0 (``_at_zero``), not at its
first event: Prometheus's ``increase()`` cannot see a series' first sample, so an
alert on the first rejected event, the first failed report or the first refusal
would never fire. A field's series (of events refused or parked) are made for
each field an event has, by ``app.ingest.validation``.

Counters are counted where their event happens (the API's accept, the worker's
write, the report, the Stripe gateway, budget admission, alert delivery);
figures that are a state rather than events (the spool, the queue, reports
waiting for an operator, reconciliation differences, jobs' last success) are
read when Prometheus scrapes (``app/api/states.py``).
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable

from prometheus_client import Counter, Histogram

EVENTS_ACCEPTED = Counter(
    "ub_events_accepted", "Events the API accepted and spooled", ["source"]
)  # source: batch (POST /v1/usage/events) or middleware (/v1/execute)
EVENTS_REJECTED = Counter("ub_events_rejected", "Events the API refused, by field", ["field"])
EVENTS_DUPLICATE = Counter("ub_events_duplicate", "Events the API found already stored")
BATCHES_RECORDED = Counter("ub_batches_recorded", "Batches a worker committed")
EVENTS_RECORDED = Counter("ub_events_recorded", "Events a worker stored (new rows)")
EVENTS_UNPRICED = Counter("ub_events_unpriced", "Events stored without a price for their model")
EVENTS_UNATTRIBUTED = Counter(
    "ub_events_unattributed", "Events a worker stored of keys no customer holds"
)
EVENTS_PARKED = Counter(
    "ub_events_parked",
    "Events a worker parked in rejected_events, by the field at fault",
    ["field"],
)  # field: provider_usage for a response no extractor reads; "event" when none is named
STREAMS_FLAGGED = Counter(
    "ub_streams_flagged", "Streamed calls recorded with usage that may fall short", ["flag"]
)  # flag: stream_cut_off (the client went away first), stream_without_usage
INGEST_LAG = Histogram(
    "ub_ingest_lag_seconds",
    "From an event's time to its row committed",
    buckets=(0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 900, 3600, 21600, 86400),
)
REPORTS = Counter("ub_reports", "Daily report outcomes, per customer and day", ["outcome"])
STRIPE_ERRORS = Counter("ub_stripe_errors", "Stripe calls that failed", ["call", "kind"])
STRIPE_RETRIES = Counter("ub_stripe_retries", "Stripe calls retried", ["call"])
BUDGET_ADMISSIONS = Counter(
    "ub_budget_admissions", "Metered calls decided by budget admission", ["how"]
)  # how: lease (the API process, on a lease), redis (a round trip), unchecked (Redis away, served)
BUDGET_REFUSALS = Counter("ub_budget_refusals", "Metered calls refused at admission", ["reason"])
BUDGET_LIMITS_REACHED = Counter(
    "ub_budget_limits_reached", "Hard budget limits reached, once per budget and period"
)
ALERT_DELIVERIES = Counter("ub_alert_deliveries", "Alert webhook attempts", ["outcome"])
BEAT_SENT = Counter("ub_beat_tasks_sent", "Tasks Beat sent on schedule", ["task"])


def at_zero(counter: Counter, *label_sets: tuple[str, ...]) -> None:
    """Make each of these series of ``counter`` now, at 0."""
    for labels in label_sets:
        counter.labels(*labels)


def _each(*values: str) -> tuple[tuple[str, ...], ...]:
    return tuple((value,) for value in values)


# The calls the Stripe gateway makes, and the errors it counts of each.
STRIPE_CALLS = (
    "active",
    "create customer",
    "meter event",
    "meter event summaries",
    "meter lookup",
    "portal session",
    "status",
)
_STRIPE_KINDS = ("RateLimitError", "APIConnectionError", "IdempotencyError", "APIError")

at_zero(EVENTS_ACCEPTED, *_each("batch", "middleware"))
at_zero(REPORTS, *_each("sent", "nothing_to_send", "needs_manual", "failed"))
at_zero(STRIPE_ERRORS, *((call, kind) for call in STRIPE_CALLS for kind in _STRIPE_KINDS))
at_zero(STRIPE_RETRIES, *_each(*STRIPE_CALLS))
at_zero(BUDGET_ADMISSIONS, *_each("lease", "redis", "unchecked"))
at_zero(
    BUDGET_REFUSALS,
    *_each(
        "budget_exceeded",
        "credits_exhausted",
        "rate_limited",
        "revoked_key",
        "unknown_key",
        "unavailable",
    ),
)
at_zero(ALERT_DELIVERIES, *_each("delivered", "failed", "unconfirmed"))
at_zero(STREAMS_FLAGGED, *_each("stream_cut_off", "stream_without_usage"))


def observe_all(histogram: Histogram, amounts: Iterable[float]) -> None:
    """``histogram.observe(amount)`` for each amount, in one update per bucket touched.

    prometheus_client observes one value at a time, each a locked update of the
    sum and of a bucket (in the workers' multiprocess mode, writes to a mapped
    file): per event, 2.3 ms of a worker's 27 per 1,000 events. The buckets are
    counted here, as ``observe`` places a value (the first bound not below it),
    and each added once; ``tests/test_metrics.py`` holds the exposition equal to
    observing one by one, which is what would catch the library's internals
    changing under it.
    """
    histogram._raise_if_not_observable()
    bounds = histogram._upper_bounds
    counts = [0] * len(bounds)
    total = 0.0
    for amount in amounts:
        counts[bisect_left(bounds, amount)] += 1
        total += amount
    if not any(counts):
        return
    histogram._sum.inc(total)
    for bucket, count in zip(histogram._buckets, counts, strict=True):
        if count:
            bucket.inc(count)
