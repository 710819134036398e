"""Migration 0012: every dimension in the ledger, every existing row and rollup kept,
and what it costs a deployment with history (its lock and its time)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from flask import Flask
from flask_migrate import downgrade, upgrade
from sqlalchemy import create_engine, text

from app.config import Settings, with_driver
from app.database import MIGRATIONS_DIR
from tests.helpers import deployment_at, measured

EVENTS = 200_000
_SEED = text(
    """
    INSERT INTO usage_events (event_id, api_key_hash, tokens_input, tokens_output,
        tokens_cache_read, tokens_total, provider, model, cost_total, status,
        pricing_status, created_at, received_at)
    SELECT 'old-' || n, 'key-' || (n % 50), 1000 + n % 7, 100, n % 500, 1100 + n % 7,
           'anthropic', 'claude-sonnet-4-5', 0.0045, 'success', 'priced',
           now() - (n % 30) * interval '1 day', now()
    FROM generate_series(1, :events) AS n
    """
)
_ROLL_UP = text(
    """
    INSERT INTO usage_daily (api_key_hash, day, provider, model, events, unpriced_events,
        tokens_input, tokens_output, tokens_cache_read, tokens_total, cost_total, updated_at)
    SELECT api_key_hash, (created_at AT TIME ZONE 'UTC')::date, provider, model, count(*), 0,
           sum(tokens_input), sum(tokens_output), sum(tokens_cache_read), sum(tokens_total),
           sum(cost_total), now()
    FROM usage_events GROUP BY 1, 2, 3, 4
    """
)
# The partitioned ledger's size: its weeks' (the parent holds no rows).
_SIZE = text(
    "SELECT sum(pg_total_relation_size(inhrelid)) FROM pg_inherits"
    " WHERE inhparent = 'usage_events'::regclass"
)
_SUMS = text(
    "SELECT count(*), sum(tokens_input), sum(tokens_cache_read), sum(cost_total),"
    " (SELECT sum(events) FROM usage_daily), (SELECT sum(tokens_input) FROM usage_daily)"
    " FROM usage_events"
)


@pytest.fixture
def deployment(app: Flask, settings: Settings) -> Iterator[Flask]:
    """A database at 0011, the release before, with history in it."""
    with deployment_at("0011", settings, app) as old:
        yield old


@pytest.mark.services
def test_migration_0012_keeps_every_row_and_rollup_and_takes_no_rewrite(
    deployment: Flask,
) -> None:
    """The new counts are 0 and the rest NULL on every existing row; the sums are
    those of before; the migration does not rewrite the ledger, so its time (all of
    it under ACCESS EXCLUSIVE, in one transaction) does not grow with it."""
    engine = create_engine(with_driver(deployment.config["SETTINGS"].database_url))
    with engine.begin() as conn:
        conn.execute(_SEED, {"events": EVENTS})
        conn.execute(_ROLL_UP)
        before = conn.execute(_SUMS).one()
        size_before = conn.execute(_SIZE).scalar()
    started = time.monotonic()
    with deployment.app_context():
        upgrade(directory=MIGRATIONS_DIR, revision="0012")
    took = time.monotonic() - started
    with engine.begin() as conn:
        after = conn.execute(_SUMS).one()
        new = conn.execute(
            text(
                "SELECT count(*) FILTER (WHERE tokens_cache_write = 0 AND tokens_input_audio = 0"
                " AND tokens_output_reasoning = 0 AND usage_extra IS NULL AND charges IS NULL"
                " AND usage_flag IS NULL), (SELECT sum(flagged_events) FROM usage_daily)"
                " FROM usage_events"
            )
        ).one()
        size_after = conn.execute(_SIZE).scalar()
    measured(
        f"migration 0012 on {EVENTS:,} events: {took:.2f} s,"
        f" ledger {size_before / 2**20:.1f} MiB before, {size_after / 2**20:.1f} MiB after"
    )
    assert tuple(after) == tuple(before)
    assert tuple(new) == (EVENTS, 0)
    assert size_after == size_before  # no row rewritten
    assert took < 10
    with deployment.app_context():
        downgrade(directory=MIGRATIONS_DIR, revision="0011")
    with engine.begin() as conn:
        assert tuple(conn.execute(_SUMS).one()) == tuple(before)
    engine.dispose()
