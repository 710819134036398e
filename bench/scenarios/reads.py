"""Reads at scale: ``SCALE_EVENTS`` events over 90 days for ``CUSTOMERS`` customers
(with their daily and hourly rollups), then the daily report's aggregation and
``GET /v1/billing/usage`` over 31 days."""

from __future__ import annotations

import random
import statistics
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import create_engine

from app.config import with_driver
from app.ingest.ledger import hourly_rollup_sql
from app.ingest.partitions import create_partitions, weeks_between
from app.progress import progress_bar
from bench.stack import CUSTOMERS, SCALE_EVENTS, Run, in_process_app, log, pg

ORDER = 50
ENABLED = SCALE_EVENTS > 0
USAGE_QUERIES = 300


def load_scale(db_url: str) -> None:
    """The events straight in SQL, and their rollups.

    Every customer has events on every day with every model, so the rollup holds
    customers × 90 × 3 rows: the worst case for the report and the usage query.
    """
    log(f"scale: loading {SCALE_EVENTS:,} events over 90 days for {CUSTOMERS:,} customers")
    # The ledger's weeks before the accepted window, which start-up does not make.
    engine = create_engine(with_driver(db_url))
    with engine.begin() as ledger:
        now = datetime.now(UTC)
        create_partitions(ledger, weeks_between(now - timedelta(days=91), now))
    engine.dispose()
    conn = pg(db_url)
    with conn.cursor() as cur:
        cur.execute("TRUNCATE usage_events, usage_daily, usage_hourly")
        cur.execute(f"""
            INSERT INTO usage_events (event_id, api_key_hash, execution_id, task_type, tokens_input,
                tokens_output, tokens_cache_read, tokens_total, provider, model, model_cost_input,
                model_cost_output, cost_input, cost_output, cost_total, execution_time, status,
                pricing_status, created_at, received_at)
            SELECT 's-' || g, encode(sha256(('bench-key-' || customer)::bytea), 'hex'), NULL,
                (ARRAY['code_generation','review'])[1 + g % 2], 500 + g % 1000, 100 + g % 300, 0,
                600 + g % 1000 + g % 300,
                (ARRAY['openai','anthropic','google'])[1 + model],
                (ARRAY['gpt-4o','claude-3-5-sonnet','gemini-2.5-pro'])[1 + model],
                0.0000025, 0.00001, (500 + g % 1000) * 0.0000025, (100 + g % 300) * 0.00001,
                (500 + g % 1000) * 0.0000025 + (100 + g % 300) * 0.00001,
                0.2 + (g * 7 % 9000) / 1000.0, CASE WHEN g % 50 = 0 THEN 'error' ELSE 'success' END,
                'priced',
                now() - (day || ' days')::interval - ((g * 7919 % 86400) || ' seconds')::interval,
                now()
            FROM (
                SELECT g, g % {CUSTOMERS} AS customer, g / {CUSTOMERS} % 90 AS day,
                       g / ({CUSTOMERS} * 90) % 3 AS model
                FROM generate_series(0::bigint, {SCALE_EVENTS} - 1) AS g
            ) AS spread""")
        cur.execute("""
            INSERT INTO usage_daily (api_key_hash, day, provider, model, events, unpriced_events,
                tokens_input, tokens_output, tokens_cache_read, tokens_total, cost_total, updated_at)
            SELECT api_key_hash, (created_at AT TIME ZONE 'UTC')::date, provider, model, count(*), 0,
                sum(tokens_input), sum(tokens_output), 0, sum(tokens_total), sum(cost_total), now()
            FROM usage_events GROUP BY 1, 2, 3, 4
            ORDER BY 2  -- day by day, as the worker writes them: each day's rows together""")
        cur.execute(hourly_rollup_sql("usage_events", "created_at"))
        cur.execute(
            "INSERT INTO billing_customers (api_key_hash, stripe_customer_id, email, name, "
            "billing_interval, is_active, created_at, updated_at) "
            f"SELECT encode(sha256(('bench-key-' || g)::bytea), 'hex'), 'cus_b' || g, "
            "'b' || g || '@example.com', 'B', 'month', true, now(), now() "
            f"FROM generate_series(0, {CUSTOMERS - 1}) g ON CONFLICT DO NOTHING"
        )
        cur.execute(
            "INSERT INTO api_keys (customer_id, key_hash, label, created_at) "
            "SELECT id, api_key_hash, 'registered', now() FROM billing_customers "
            "ON CONFLICT DO NOTHING"
        )
        cur.execute("VACUUM ANALYZE usage_events")
        cur.execute("VACUUM ANALYZE usage_daily")
        cur.execute("VACUUM ANALYZE usage_hourly")
    conn.close()


def run(run: Run, results: dict[str, Any]) -> None:
    t0 = time.perf_counter()
    load_scale(run.db_url)
    results["scale_load_s"] = round(time.perf_counter() - t0, 1)
    app = in_process_app(run)
    from app.billing.report import cumulative_usage

    settings = app.config["SETTINGS"]
    yesterday = datetime.now(UTC).date() - timedelta(days=1)
    with app.app_context():
        timings = []
        for _ in range(3):
            t = time.perf_counter()
            usage = cumulative_usage(settings, yesterday)
            timings.append(time.perf_counter() - t)
    log(f"report aggregation: {len(usage):,} customers")
    client = app.test_client()
    start = (yesterday - timedelta(days=30)).isoformat()
    lat = []
    with progress_bar("usage queries over 31 days") as progress:
        for done in range(USAGE_QUERIES):
            key = f"bench-key-{random.randrange(CUSTOMERS)}"
            t = time.perf_counter()
            resp = client.get(
                f"/v1/billing/usage?start_date={start}&end_date={yesterday.isoformat()}",
                headers={"Authorization": f"Bearer {key}"},
            )
            lat.append(time.perf_counter() - t)
            assert resp.status_code == 200 and resp.get_json()["totals"]["events"] > 0
            progress(done + 1, USAGE_QUERIES)
    results["reads"] = {
        "events": SCALE_EVENTS,
        "customers": CUSTOMERS,
        "report_aggregation_s": round(min(timings), 3),
        "usage_31d_p50_ms": round(statistics.median(lat) * 1000, 2),
        "usage_31d_p99_ms": round(statistics.quantiles(lat, n=100)[98] * 1000, 2),
    }


def headline(results: dict[str, Any]) -> dict[str, Any]:
    reads = results.get("reads", {})
    return {
        "report_aggregation_s": reads.get("report_aggregation_s"),
        "usage_31d_p99_ms": reads.get("usage_31d_p99_ms"),
    }


def rows(results: dict[str, Any]) -> list[tuple[str, Any, str]]:
    rd = results.get("reads")
    if not rd:
        return []
    return [
        ("report aggregation, 1 day (s)", rd["report_aggregation_s"], "<= 2"),
        (
            "usage 31 days p50 / p99 (ms)",
            f"{rd['usage_31d_p50_ms']} / {rd['usage_31d_p99_ms']}",
            "p99 <= 50",
        ),
    ]
