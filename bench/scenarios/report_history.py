"""The daily report's aggregation as the history grows: over the rollups ``reads`` loaded
(90 days of ``SCALE_EVENTS`` events), then with the rollups extended to 365 days;
each time the bounded sum the report uses (frozen totals for the days no event can
reach, the recent days summed) against summing the whole history, as it did before."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any

from bench.stack import CUSTOMERS, SCALE_EVENTS, Run, in_process_app, log, pg

ORDER = 58  # after the scenarios that read the 90 days as loaded; before cleanup
ENABLED = SCALE_EVENTS > 0


def extend_to_a_year(db_url: str) -> int:
    """Every customer's rollup rows for the days 90 to 364 back, as the loaded ones are."""
    conn = pg(db_url)
    with conn.cursor() as cur:
        cur.execute(f"""
            INSERT INTO usage_daily (api_key_hash, day, provider, model, events, unpriced_events,
                tokens_input, tokens_output, tokens_cache_read, tokens_total, cost_total, updated_at)
            SELECT encode(sha256(('bench-key-' || customer)::bytea), 'hex'),
                (now() AT TIME ZONE 'UTC')::date - back,
                (ARRAY['openai','anthropic','google'])[1 + model],
                (ARRAY['gpt-4o','claude-3-5-sonnet','gemini-2.5-pro'])[1 + model],
                1, 0, 1000, 250, 0, 1250, 0.005, now()
            FROM generate_series(90, 364) AS back, generate_series(0, {CUSTOMERS - 1}) AS customer,
                 generate_series(0, 2) AS model
            ORDER BY back DESC  -- day by day, as the worker would have written them
            ON CONFLICT DO NOTHING""")
        added = cur.rowcount
        # The year's rows in the order a year of the worker's writes leaves them: day by
        # day, oldest first (appended here, they would follow the 90 recent days, and
        # the planner, seeing days out of order on disk, reads the whole table).
        cur.execute("CLUSTER usage_daily USING ix_usage_daily_day")
        cur.execute("TRUNCATE frozen_usage")
        cur.execute("VACUUM ANALYZE usage_daily")
    conn.close()
    return added


def _measure(app: Any, label: str) -> dict[str, float]:
    from app.billing.report import _sums, cumulative_usage
    from app.extensions import db

    settings = app.config["SETTINGS"]
    yesterday = datetime.now(UTC).date() - timedelta(days=1)
    with app.app_context():
        t = time.perf_counter()
        cumulative_usage(settings, yesterday)
        db.session.commit()  # the frozen totals, as the report commits them
        first = time.perf_counter() - t
        steady = []
        for _ in range(3):
            t = time.perf_counter()
            cumulative_usage(settings, yesterday)
            steady.append(time.perf_counter() - t)
        t = time.perf_counter()
        whole = db.session.execute(_sums(None, yesterday)).all()
        unbounded = time.perf_counter() - t
        db.session.rollback()
    log(
        f"report aggregation, {label}: first {first:.2f} s, then {min(steady):.3f} s; "
        f"the whole history {unbounded:.2f} s ({len(whole):,} customers)"
    )
    return {
        "first_s": round(first, 3),
        "steady_s": round(min(steady), 3),
        "whole_history_s": round(unbounded, 3),
    }


def run(run: Run, results: dict[str, Any]) -> None:
    app = in_process_app(run)
    days_90 = _measure(app, "90 days")
    added = extend_to_a_year(run.db_url)
    log(f"history: {added:,} rollup rows added, 365 days in all")
    results["report_history"] = {
        "rows_added": added,
        "90_days": days_90,
        "365_days": _measure(app, "365 days"),
    }


def headline(results: dict[str, Any]) -> dict[str, Any]:
    history = results.get("report_history")
    if not history:
        return {}
    return {"report_365_days_s": history["365_days"]["steady_s"]}


def rows(results: dict[str, Any]) -> list[tuple[str, Any, str]]:
    history = results.get("report_history")
    if not history:
        return []
    out = []
    for label in ("90_days", "365_days"):
        m = history[label]
        out.append(
            (
                f"report aggregation, {label.replace('_', ' ')} of rollups: "
                "steady / first (freezing) / whole history (s)",
                f"{m['steady_s']} / {m['first_s']} / {m['whole_history_s']}",
                "steady <= 0.5",
            )
        )
    return out
