"""The fixed, log-spaced latency buckets the hourly rollup counts calls in.

Percentiles of ``execution_time`` are read from these counts, never by scanning
events: each bucket's upper bound is √2 times its lower one, from 10 ms to about
15 minutes, so an estimate is off by at most that ratio's half-step (±19 %),
and buckets add up across hours, keys and models. The bounds are written to
four significant digits, so Python (``bucket_of``) and PostgreSQL
(``width_bucket``) put a call in the same bucket.
"""

from __future__ import annotations

import bisect
from decimal import Decimal

# Lower bounds of buckets 1..N; bucket 0 holds calls faster than the first.
LATENCY_BOUNDS: tuple[Decimal, ...] = tuple(
    Decimal(f"{0.01 * 2 ** (i / 2):.4g}") for i in range(34)
)
LATENCY_COLUMNS: tuple[str, ...] = tuple(f"latency_{i:02d}" for i in range(len(LATENCY_BOUNDS) + 1))


def bucket_of(seconds: Decimal) -> int:
    """The bucket a call of this duration is counted in: how many bounds it reaches."""
    return bisect.bisect_right(LATENCY_BOUNDS, seconds)


def bucket_sql(column: str) -> str:
    """``bucket_of`` in PostgreSQL: NULL for a call without a duration."""
    bounds = ", ".join(str(bound) for bound in LATENCY_BOUNDS)
    return f"width_bucket({column}, ARRAY[{bounds}]::numeric[])"
