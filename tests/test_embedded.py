"""The embedded default (SQLite file, filesystem broker): what a fresh clone runs.

With the services up, every other test runs on PostgreSQL; these keep the
portable write path and the README's demo command honest there too.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

from flask import Flask
from sqlalchemy import select

from app.extensions import db
from app.ingest.models import UsageDaily
from tests.factories import event
from tests.helpers import count_events, project_root, record, wait_for
from tests.processes import free_port


def test_embedded_default_records_each_event_once_and_rolls_it_up(sqlite_app: Flask) -> None:
    now = datetime.now(UTC)
    priced = [event("key-e", tokens_input=1000, tokens_output=100, timestamp=now.isoformat())]
    unpriced = event("key-e", model="no-such-model", timestamp=now.isoformat())
    with sqlite_app.app_context():
        first = record([*priced, unpriced], batch_id="b-1")
        again = record([*priced, unpriced], batch_id="b-1")  # a redelivered batch
        other = record(priced, batch_id="b-2")  # the same event in another batch
        rows = db.session.scalars(select(UsageDaily).order_by(UsageDaily.model)).all()
    assert (first.inserted, first.unpriced) == (2, 1)
    assert again.already_recorded and again.inserted == 0
    assert (other.inserted, other.duplicates) == (0, 1)
    assert count_events(sqlite_app, api_key_hash=priced[0]["api_key_hash"]) == 2
    sonnet, unknown = rows
    # claude-3-5-sonnet: $3 / $15 per MTok
    assert (sonnet.events, sonnet.tokens_total) == (1, 1100)
    assert sonnet.cost_total == Decimal("0.0045")
    assert (unknown.events, unknown.unpriced_events, unknown.cost_total) == (1, 1, Decimal(0))


def test_demo_command_turns_a_metered_call_into_a_priced_row(tmp_path: Path) -> None:
    """``python -m app.serve`` (what ``scripts/dev.py serve`` runs) with no server at all."""
    port = free_port()
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in {"DATABASE_URL", "REDIS_URL", "ENABLE_PRICING_MIDDLEWARE"}
    }
    env.update(INSTANCE_DIR=str(tmp_path), PORT=str(port))
    log = (tmp_path / "serve.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "app.serve"],
        cwd=project_root(),
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: f"listening on {base}" in (tmp_path / "serve.log").read_text(), 60)
        wait_for(lambda: _up(base), 30)
        # The two curl lines it printed, run as a newcomer pastes them into a shell.
        printed = (tmp_path / "serve.log").read_text().splitlines()
        [execute_line] = [line.split("try:", 1)[1] for line in printed if "try:" in line]
        [usage_line] = [line.split("then:", 1)[1] for line in printed if "then:" in line]
        call = json.loads(_shell(execute_line))
        usage = wait_for(lambda: _recorded(json.loads(_shell(usage_line))), 60)
        [page_line] = [line for line in printed if "/dashboard/" in line]
        api_key = execute_line.split("Bearer ", 1)[1].split("'", 1)[0]
        shown = _dashboard_usage(page_line.split("at ", 1)[1].split(" ", 1)[0], api_key)
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(timeout=60)
    tokens = call["usage"]["input_tokens"] + call["usage"]["output_tokens"]
    assert usage["totals"]["tokens_total"] == tokens
    # gpt-4o: $2.50 / $10 per MTok
    expected = call["usage"]["input_tokens"] * Decimal("0.0000025") + call["usage"][
        "output_tokens"
    ] * Decimal("0.00001")
    assert Decimal(usage["totals"]["cost"]) == expected
    assert (tmp_path / "usage_billing.db").exists()
    assert shown["totals"] == usage["totals"]  # the page's data is the API's, on SQLite too


def _dashboard_usage(page: str, api_key: str) -> dict:
    """Sign in to the printed page with the demo key, as a browser would (cookies, the
    form's CSRF token), check the bundled chart library is served, and read the page's
    usage data."""
    import http.cookiejar
    import urllib.parse

    opener = urllib.request.build_opener(
        urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar())
    )
    html = opener.open(page, timeout=10).read().decode()  # redirected to the sign-in form
    token = html.split('name="csrf_token" value="', 1)[1].split('"', 1)[0]
    form = urllib.parse.urlencode({"api_key": api_key, "csrf_token": token}).encode()
    assert "data-start" in opener.open(f"{page}sign-in", form, timeout=10).read().decode()
    chart = opener.open(f"{page}static/vendor/chart.umd.min.js", timeout=10).read()
    assert b"Chart.js v4" in chart[:200]
    today = datetime.now(UTC).date().isoformat()
    data = f"{page}data/usage?start_date={today}&end_date={today}"
    return json.loads(opener.open(data, timeout=10).read())


def _shell(line: str) -> str:
    done = subprocess.run(["bash", "-c", line], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0 and done.stdout, (line, done.returncode, done.stderr)
    return done.stdout


def _recorded(usage: dict) -> dict | None:
    return usage if usage["totals"]["events"] == 1 else None


def _up(base: str) -> bool:
    try:
        with urllib.request.urlopen(f"{base}/healthz", timeout=2):
            return True
    except OSError:
        time.sleep(0.2)
        return False


def test_budget_limits_are_exact_at_any_size_on_the_embedded_default(
    app: Flask, tmp_path: Path
) -> None:
    """SQLite held a budget's limit as an integer count of 10⁻¹²: a tokens budget of a
    billion overflowed it. Migration 0015 rewrites the limits as exact decimals, the
    ones set before it included, and a billion-token limit is stored as set."""
    from flask_migrate import upgrade
    from sqlalchemy import text

    from app.budgets.models import Budget
    from app.config import Settings
    from app.database import MIGRATIONS_DIR
    from tests.helpers import create_extra_app

    old = create_extra_app(Settings(instance_dir=tmp_path, auto_migrate=False), app)
    with old.app_context():
        upgrade(directory=MIGRATIONS_DIR, revision="0014")
        db.session.execute(
            text(
                "INSERT INTO billing_customers (id, api_key_hash, email, name, billing_interval,"
                " is_active, created_at, updated_at) VALUES (1, 'h', 'e@x', 'E', 'month', 1,"
                " '2026-11-01 00:00:00', '2026-11-01 00:00:00')"
            )
        )
        db.session.execute(  # $12.5 as the old column held it: 12.5 × 10¹²
            text(
                "INSERT INTO budgets (id, customer_id, metric, period, limit_value, thresholds,"
                " hard_limit, created_at, updated_at) VALUES (1, 1, 'usd', 'month',"
                " 12500000000000, '[]', 0, '2026-11-01 00:00:00', '2026-11-01 00:00:00')"
            )
        )
        db.session.commit()
        upgrade(directory=MIGRATIONS_DIR)
        assert db.session.get(Budget, 1).limit_value == Decimal("12.5")
        billion = Budget(
            customer_id=1,
            metric="tokens",
            period="month",
            limit_value=Decimal(10**9),
            thresholds=[],
            hard_limit=True,
        )
        db.session.add(billion)
        db.session.commit()
        db.session.expire_all()
        assert db.session.get(Budget, billion.id).limit_value == Decimal(10**9)
        db.session.remove()
        db.engine.dispose()
