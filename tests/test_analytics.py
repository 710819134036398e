"""The analytics API: the hourly rollup under it, usage by period and dimension, provider
performance, trends and forecast, cost recommendations, and the raw-event export."""

from __future__ import annotations

import csv
import io
import json
import random
import threading
from collections import Counter, defaultdict
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select

from app.analytics.performance import percentile
from app.config import Settings
from app.customers.models import BillingCustomer
from app.extensions import db
from app.ingest.latency import LATENCY_BOUNDS, LATENCY_COLUMNS, bucket_of
from app.ingest.models import UsageEvent, UsageHourly
from app.pricing.book import PriceBook
from app.security import hash_api_key
from tests.factories import event
from tests.helpers import ADMIN_TOKEN, auth, create_extra_app, issue_key, record, tokens

NOW = datetime.now(UTC)
YESTERDAY = (NOW - timedelta(days=1)).replace(hour=10, minute=15, second=0, microsecond=0)


def _hourly_from_events(app: Flask) -> dict[tuple[Any, ...], dict[str, Any]]:
    """What ``usage_hourly`` must hold, computed here from the stored events."""
    expected: dict[tuple[Any, ...], dict[str, Any]] = defaultdict(Counter)
    with app.app_context():
        for e in db.session.scalars(select(UsageEvent)):
            hour = e.created_at.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
            key = (e.api_key_hash, hour, e.provider, e.model, e.task_type or "", e.status)
            row = expected[key]
            row["events"] += 1
            row["unpriced_events"] += e.pricing_status == "unpriced"
            row["tokens_input"] += e.tokens_input
            row["tokens_output"] += e.tokens_output
            row["tokens_cache_read"] += e.tokens_cache_read
            row["cost_total"] += e.cost_total or 0
            if e.execution_time is not None:
                row["timed_events"] += 1
                row["execution_ms"] += int(e.execution_time * 1000)
                row["timed_tokens_output"] += e.tokens_output
                row[LATENCY_COLUMNS[bucket_of(e.execution_time)]] += 1
        db.session.rollback()
    return expected


def _hourly_stored(app: Flask) -> dict[tuple[Any, ...], dict[str, Any]]:
    names = (
        "events",
        "unpriced_events",
        "tokens_input",
        "tokens_output",
        "tokens_cache_read",
        "cost_total",
        "timed_events",
        "execution_ms",
        "timed_tokens_output",
        *LATENCY_COLUMNS,
    )
    stored = {}
    with app.app_context():
        for r in db.session.execute(select(UsageHourly.__table__)):
            key = (r.api_key_hash, r.hour, r.provider, r.model, r.task_type, r.status)
            stored[key] = Counter({n: getattr(r, n) for n in names if getattr(r, n)})
        db.session.rollback()
    return stored


def _mixed_events(key: str, count: int, seed: int = 7) -> list[dict[str, Any]]:
    """Events over several hours, models, task types and statuses, durations across
    the buckets (some none), a few unpriced."""
    rng = random.Random(seed)
    events = []
    for i in range(count):
        at = YESTERDAY - timedelta(hours=rng.randrange(6), minutes=rng.randrange(60))
        fields: dict[str, Any] = {
            "timestamp": at.isoformat(),
            "model": rng.choice(["claude-3-5-sonnet-20241022", "claude-3-haiku-20240307", "nope"]),
            "task_type": rng.choice(["code_generation", "review", None]),
            "status": rng.choice(["success", "success", "success", "error", "timeout"]),
            "tokens_input": rng.randrange(1, 20_000),
            "tokens_output": rng.randrange(0, 4_000),
        }
        if i % 5:
            fields["execution_time"] = str(Decimal(rng.randrange(1, 2_000_000)) / 1000)
        events.append(event(key, **fields))
    return events


def test_the_hourly_rollup_holds_exactly_the_stored_events(app: Flask) -> None:
    """Appended by COPY, merged (a batch holding a stored event), row at a time."""
    events = _mixed_events("key-h", 400)
    with app.app_context():
        record(events[:200])  # appended
        record(events[150:300])  # merged: 50 stored before
        for e in events[300:]:
            record([e])
    assert _hourly_stored(app) == _hourly_from_events(app)


def test_the_hourly_rollup_on_the_embedded_default(sqlite_app: Flask) -> None:
    with sqlite_app.app_context():
        record(_mixed_events("key-hs", 120, seed=3))
    assert _hourly_stored(sqlite_app) == _hourly_from_events(sqlite_app)


@pytest.mark.services  # PostgreSQL's width_bucket
def test_latency_buckets_agree_between_python_and_postgresql(app: Flask) -> None:
    from sqlalchemy import text

    from app.ingest.latency import bucket_sql

    samples = [
        Decimal("0.000"),
        Decimal("0.009"),
        *LATENCY_BOUNDS,
        Decimal("926.799"),
        Decimal(10**7),
    ]
    with app.app_context():
        for value in samples:
            sql = text(f"SELECT {bucket_sql('CAST(:v AS numeric)')}")
            assert db.session.scalar(sql, {"v": value}) == bucket_of(value), value


# -- GET /v1/billing/usage -------------------------------------------------------------------
def _get(client: FlaskClient, path: str, key: str) -> tuple[int, Any]:
    resp = client.get(path, headers=auth(key))
    return resp.status_code, resp.get_json()


def _usage(client: FlaskClient, key: str, query: str) -> tuple[int, Any]:
    day = YESTERDAY.date().isoformat()
    return _get(client, f"/v1/billing/usage?start_date={day}&end_date={day}{query}", key)


@pytest.fixture()
def mixed(app: Flask, make_customer: Callable[..., BillingCustomer]) -> list[dict[str, Any]]:
    make_customer("key-m")
    events = _mixed_events("key-m", 300)
    with app.app_context():
        record(events)
    return stored_rows(app, "key-m")


def stored_rows(app: Flask, key: str) -> list[dict[str, Any]]:
    with app.app_context():
        rows = db.session.scalars(
            select(UsageEvent).where(UsageEvent.api_key_hash == hash_api_key(key))
        ).all()
        out = [
            {
                "hour": r.created_at.astimezone(UTC).strftime("%Y-%m-%dT%H:00:00Z"),
                "model": r.model,
                "provider": r.provider,
                "task_type": r.task_type,
                "status": r.status,
                "tokens_input": r.tokens_input,
                "cost": r.cost_total or Decimal(0),
                "execution_time": r.execution_time,
                "tokens_output": r.tokens_output,
            }
            for r in rows
        ]
        db.session.rollback()
    return out


@pytest.mark.parametrize(
    ("granularity", "group_by"),
    [
        ("hour", "task_type"),
        ("day", "status,model"),
        ("month", "task_type,status"),
        ("hour", ""),
        ("day", "provider,model"),
    ],
)
def test_usage_by_period_and_dimension_adds_up_the_events(
    client: FlaskClient, mixed: list[dict[str, Any]], granularity: str, group_by: str
) -> None:
    status, body = _usage(client, "key-m", f"&granularity={granularity}&group_by={group_by}")
    assert status == 200, body
    dims = [d for d in group_by.split(",") if d]
    expected: Counter[tuple[Any, ...]] = Counter()
    cost: dict[tuple[Any, ...], Decimal] = defaultdict(Decimal)
    for e in mixed:
        period = {"hour": e["hour"], "day": e["hour"][:10], "month": e["hour"][:7]}[granularity]
        cell = (period, *(e[d] for d in dims))
        expected[cell] += e["tokens_input"]
        cost[cell] += e["cost"]
    got: Counter[tuple[Any, ...]] = Counter()
    for p in body["periods"]:
        for g in p["groups"]:
            cell = (p["period"], *(g[d] for d in dims))
            got[cell] += g["tokens_input"]
            assert Decimal(g["cost"]) == cost[cell]
    assert got == expected
    assert body["totals"]["events"] == len(mixed)
    assert body["group_by"] == dims and body["granularity"] == granularity
    assert ("charge" in body["totals"]) == (granularity != "hour")


def test_usage_filters_keep_only_the_matching_usage(
    client: FlaskClient, mixed: list[dict[str, Any]]
) -> None:
    query = "&status=error,timeout&model=nope&group_by=status"
    status, body = _usage(client, "key-m", query)
    assert status == 200, body
    wanted = [e for e in mixed if e["status"] in {"error", "timeout"} and e["model"] == "nope"]
    assert wanted and body["totals"]["events"] == len(wanted)
    by_status = Counter(e["status"] for e in wanted)
    [period] = body["periods"]
    assert {g["status"]: g["events"] for g in period["groups"]} == by_status
    assert "charge" not in body["totals"]  # a charge is not made of a filtered part
    assert body["filters"] == {"model": ["nope"], "status": ["error", "timeout"]}


def test_usage_by_key_and_filtered_to_one_key(
    app: Flask, client: FlaskClient, make_customer: Callable[..., BillingCustomer]
) -> None:
    customer = make_customer("key-k1")
    second = issue_key(client, customer.id, "ci")
    with app.app_context():
        record([event("key-k1", timestamp=YESTERDAY.isoformat(), tokens_input=700)])
        record([event(second["key"], timestamp=YESTERDAY.isoformat(), tokens_input=50)])
    status, body = _usage(client, "key-k1", f"&group_by=key&key={second['id']}")
    assert status == 200, body
    [period] = body["periods"]
    assert [(g["key"]["label"], g["tokens_input"]) for g in period["groups"]] == [("ci", 50)]
    assert second["key"] not in json.dumps(body)


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("&granularity=week", "granularity"),
        ("&group_by=model,customer", "group_by"),
        ("&status=", None),  # an empty list is allowed: nothing matches
        ("&key=0", "key"),
        ("&key=99999", "key"),  # not a key of the caller's
        ("&key=abc", "key"),
        ("&model=" + "m" * 129, "model"),
        ("&granularity=day&granularity=hour", "granularity"),
        ("&bogus=1", "bogus"),
    ],
)
def test_usage_bad_analytics_parameters_are_400_naming_them(
    client: FlaskClient, make_customer: Callable[..., BillingCustomer], query: str, field: str
) -> None:
    make_customer("key-bad")
    status, body = _usage(client, "key-bad", query)
    if field is None:
        assert status == 200 and body["totals"]["events"] == 0
        return
    assert status == 400, body
    assert body["error"]["field"] == field


def test_hourly_detail_has_its_bounds(
    client: FlaskClient, make_customer: Callable[..., BillingCustomer], app: Flask
) -> None:
    make_customer("key-hb")
    today = NOW.date()
    long_ago = today - timedelta(days=app.config["SETTINGS"].usage_hourly_retention_days + 1)
    soon_after = long_ago + timedelta(days=10)
    cases = {
        f"start_date={today - timedelta(days=31)}&end_date={today}&granularity=hour": "end_date",
        f"start_date={long_ago}&end_date={soon_after}&group_by=status": "start_date",
        f"start_date={long_ago}&end_date={soon_after}&task_type=review": "start_date",
    }
    for query, field in cases.items():
        status, body = _get(client, f"/v1/billing/usage?{query}", "key-hb")
        assert (status, body["error"]["field"]) == (400, field), query
    # The daily rollup keeps the whole history: the same range by model is fine.
    query = f"start_date={long_ago}&end_date={soon_after}"
    status, _ = _get(client, f"/v1/billing/usage?{query}", "key-hb")
    assert status == 200


# -- GET /v1/billing/performance -----------------------------------------------------------
def test_performance_per_model_from_the_latency_buckets(
    app: Flask, client: FlaskClient, make_customer: Callable[..., BillingCustomer]
) -> None:
    make_customer("key-p")
    rng = random.Random(11)
    durations = [Decimal(round(rng.lognormvariate(0.5, 0.8), 3)) for _ in range(2000)]
    events = [
        event(
            "key-p",
            timestamp=YESTERDAY.isoformat(),
            execution_time=str(d),
            tokens_output=400,
            status="error" if i % 10 == 0 else "success",
        )
        for i, d in enumerate(durations)
    ]
    events.append(event("key-p", timestamp=YESTERDAY.isoformat(), tokens_output=999))  # untimed
    with app.app_context():
        for start in range(0, len(events), 500):
            record(events[start : start + 500])
    day = YESTERDAY.date().isoformat()
    status, body = _get(client, f"/v1/billing/performance?start_date={day}&end_date={day}", "key-p")
    assert status == 200, body
    [model] = body["models"]
    assert model["calls"] == 2001 and model["timed_calls"] == 2000
    assert model["statuses"] == {"error": 200, "success": 1801}
    assert model["error_rate"] == pytest.approx(200 / 2001, rel=1e-3)
    seconds = sum(durations)
    assert model["output_tokens_per_second"] == pytest.approx(float(2000 * 400 / seconds), rel=1e-3)
    ordered = sorted(durations)
    for q in (50, 95, 99):
        true = float(ordered[int(q / 100 * len(ordered)) - 1])
        # Within the bucket's width (√2) of the true percentile.
        assert true / 2**0.5 <= model["latency_seconds"][f"p{q}"] <= true * 2**0.5, q


def test_percentiles_from_buckets_by_hand() -> None:
    counts = [0] * len(LATENCY_COLUMNS)
    counts[bucket_of(Decimal("1.0"))] = 100  # [0.905, 1.28)
    low, high = (
        float(LATENCY_BOUNDS[bucket_of(Decimal(1)) - 1]),
        float(LATENCY_BOUNDS[bucket_of(Decimal(1))]),
    )
    assert low <= percentile(counts, 50) <= high
    assert percentile(counts, 100) == pytest.approx(high)
    assert percentile([0] * len(LATENCY_COLUMNS), 50) is None


# -- GET /v1/billing/forecast -------------------------------------------------------------
def test_forecast_projects_the_month_and_each_budget_by_its_stated_method(
    app: Flask, client: FlaskClient, make_customer: Callable[..., BillingCustomer]
) -> None:
    customer = make_customer("key-f")
    today = NOW.date()
    month_start = today.replace(day=1)
    # One event a day for the last ten days, each costing a different amount.
    spend: dict[date, Decimal] = {}
    with app.app_context():
        for back in range(0, 10):
            day = today - timedelta(days=back)
            at = datetime.combine(day, datetime.min.time(), tzinfo=UTC) + timedelta(minutes=5)
            if at > NOW:
                at = NOW - timedelta(seconds=1)
            record([event("key-f", timestamp=at.isoformat(), tokens_input=1000 * (back + 1))])
            # claude-3-5-sonnet: $3 / $15 per MTok, 100 output tokens each
            spend[day] = Decimal("0.000003") * 1000 * (back + 1) + Decimal("0.0015")
    resp = client.post(
        f"/v1/billing/customers/{customer.id}/budgets",
        json={"metric": "usd", "period": "month", "limit": "0.05"},
        headers=auth(ADMIN_TOKEN),
    )
    assert resp.status_code == 201, resp.get_json()
    status, body = _get(client, "/v1/billing/forecast", "key-f")
    assert status == 200, body
    rate = sum(spend[today - timedelta(days=d)] for d in range(1, 8)) / 7
    end = (month_start + timedelta(days=32)).replace(day=1)
    later = (end - today).days - 1
    before = sum(v for d, v in spend.items() if month_start <= d < today)
    projected = before + max(spend[today], rate) + rate * later
    assert Decimal(body["cost"]["projected_month"]) == projected.quantize(Decimal("0.01"))
    mtd = sum(v for d, v in spend.items() if d >= month_start)
    assert Decimal(body["cost"]["month_to_date"]) == mtd.quantize(Decimal("0.01"))
    assert "mean of the last 7" in body["method"]
    [budget] = body["budgets"]
    assert Decimal(budget["projected"]) == projected.quantize(Decimal("0.01"))
    assert budget["projected_over"] is (projected > Decimal("0.05"))
    status, body = _get(client, "/v1/billing/forecast?x=1", "key-f")
    assert (status, body["error"]["field"]) == (400, "x")


# -- GET /v1/billing/recommendations -------------------------------------------------------
def test_recommendations_compare_prices_for_the_actual_mix(
    app: Flask, client: FlaskClient, make_customer: Callable[..., BillingCustomer]
) -> None:
    make_customer("key-r")
    with app.app_context():
        record(
            [
                event(
                    "key-r",
                    timestamp=YESTERDAY.isoformat(),
                    tokens_input=10_000,
                    tokens_output=1_000,
                    tokens_cache_read=2_000,
                )
                for _ in range(10)
            ]
        )
        book = PriceBook.load()
    status, body = _get(client, "/v1/billing/recommendations?days=7", "key-r")
    assert status == 200, body
    assert body["kind"] == "price_comparison" and "quality" in body["note"]
    [sonnet] = body["models"]
    current = Decimal(sonnet["cost_at_today_prices"])
    own = book.cost("anthropic", "claude-3-5-sonnet-20241022", NOW, tokens(10_000, 1_000, 2_000))
    assert current == own.total * 10
    assert sonnet["cheaper_models"], "a price book of hundreds of models has a cheaper one"
    for other in sonnet["cheaper_models"]:
        theirs = book.cost(other["provider"], other["model"], NOW, tokens(10_000, 1_000, 2_000))
        assert Decimal(other["cost"]) == theirs.total * 10 < current
        assert Decimal(other["saving"]) == current - Decimal(other["cost"])
    # Half of the 8,000 uncached input tokens read from cache instead.
    cached = book.cost("anthropic", "claude-3-5-sonnet-20241022", NOW, tokens(10_000, 1_000, 6_000))
    assert Decimal(sonnet["caching"]["saving"]) == (own.total - cached.total) * 10
    status, body = _get(client, "/v1/billing/recommendations?days=0", "key-r")
    assert (status, body["error"]["field"]) == (400, "days")


@pytest.mark.parametrize("curated", [False, True])
def test_recommendations_fold_aliases_and_offer_comparable_models_only(
    app: Flask,
    settings: Settings,
    client: FlaskClient,
    make_customer: Callable[..., BillingCustomer],
    curated: bool,
) -> None:
    """One row per model, whatever name it came under (a router's ``liquid/lfm-7b``
    and ``lfm-7b``); a frontier model is offered its own provider's cheaper models,
    or only those of an operator's group that holds it; never a 7B model of another
    family; the window is stated."""
    make_customer("key-fold")
    mix = {"timestamp": YESTERDAY.isoformat(), "tokens_input": 10_000, "tokens_output": 1_000}
    with app.app_context():
        record(
            [
                event("key-fold", provider="openrouter", model=m, **mix)
                for m in ("liquid/lfm-7b", "lfm-7b")
                for _ in range(5)
            ]
            + [event("key-fold", model="claude-3-opus-20240229", **mix) for _ in range(5)]
        )
    groups = [["anthropic/claude-3-opus-20240229", "openai/gpt-4o-mini", "openai/gpt-4o"]]
    extra = create_extra_app(settings.replace(recommendation_groups=groups if curated else []), app)
    status, body = _get(extra.test_client(), "/v1/billing/recommendations?days=7", "key-fold")
    assert status == 200, body
    rows = {(m["provider"], m["model"].rsplit("/", 1)[-1]): m for m in body["models"]}
    assert [name for _, name in rows].count("lfm-7b") == 1  # one row, both names' calls
    [lfm] = [m for (_, name), m in rows.items() if name == "lfm-7b"]
    assert lfm["calls"] == 10
    [opus] = [m for m in body["models"] if m["model"].startswith("claude-3-opus")]
    offered = {(c["provider"], c["model"]) for c in opus["cheaper_models"]}
    assert offered, "a cheaper comparable model exists"
    if curated:
        assert offered <= {("openai", "gpt-4o-mini"), ("openai", "gpt-4o")}
    else:
        assert {provider for provider, _ in offered} == {"anthropic"}
    assert not any(model.endswith("lfm-7b") for _, model in offered)
    assert len({model.rsplit("/", 1)[-1] for _, model in offered}) == len(offered)
    assert body["start_date"] in body["note"] and body["end_date"] in body["note"]


# -- GET /v1/billing/usage/export ----------------------------------------------------------
def _export(client: FlaskClient, token: str, query: str) -> Any:
    day = YESTERDAY.date().isoformat()
    return client.get(
        f"/v1/billing/usage/export?start_date={day}&end_date={day}{query}", headers=auth(token)
    )


def test_export_streams_the_callers_events_as_csv_and_jsonl(
    app: Flask, client: FlaskClient, make_customer: Callable[..., BillingCustomer]
) -> None:
    make_customer("key-x")
    make_customer("key-y")
    mine = [
        event("key-x", timestamp=YESTERDAY.isoformat(), metadata={"note": 'a "quoted", \\ line'})
        for _ in range(30)
    ]
    with app.app_context():
        record([*mine, event("key-y", timestamp=YESTERDAY.isoformat())])
    resp = _export(client, "key-x", "&format=csv")
    assert resp.status_code == 200 and resp.mimetype == "text/csv"
    assert "attachment" in resp.headers["Content-Disposition"]
    text_body = resp.get_data(as_text=True)
    rows = list(csv.DictReader(io.StringIO(text_body)))
    assert sorted(r["event_id"] for r in rows) == sorted(e["event_id"] for e in mine)
    assert json.loads(rows[0]["metadata"]) == {"note": 'a "quoted", \\ line'}
    assert Decimal(rows[0]["cost_total"]) == Decimal("0.0045")
    assert "key-x" not in text_body and hash_api_key("key-x") not in text_body
    resp = _export(client, "key-x", "&format=jsonl")
    lines = [json.loads(line) for line in resp.get_data(as_text=True).splitlines()]
    assert sorted(line["event_id"] for line in lines) == sorted(e["event_id"] for e in mine)
    assert lines[0]["tokens_input"] == 1000 and lines[0]["metadata"]["note"].endswith("\\ line")
    assert lines[0]["created_at"].endswith("Z")


def test_export_for_admins_is_any_customers_or_all(
    app: Flask, client: FlaskClient, make_customer: Callable[..., BillingCustomer]
) -> None:
    one = make_customer("key-a1")
    make_customer("key-a2")
    with app.app_context():
        record([event(k, timestamp=YESTERDAY.isoformat()) for k in ("key-a1", "key-a2", "key-a2")])
    everything = _export(client, ADMIN_TOKEN, "&format=jsonl").get_data(as_text=True)
    assert len(everything.splitlines()) == 3
    theirs = _export(client, ADMIN_TOKEN, f"&format=jsonl&customer_id={one.id}")
    [line] = theirs.get_data(as_text=True).splitlines()
    assert json.loads(line)["customer_id"] == one.id
    assert _export(client, ADMIN_TOKEN, "&customer_id=99999").status_code == 404
    denied = _export(client, "key-a1", f"&customer_id={one.id}")
    assert denied.status_code == 400 and denied.get_json()["error"]["field"] == "customer_id"
    assert _export(client, "key-a1", "&format=xml").get_json()["error"]["field"] == "format"


def test_flask_billing_export_writes_the_file(
    app: Flask, make_customer: Callable[..., BillingCustomer], tmp_path: Any
) -> None:
    make_customer("key-cli")
    with app.app_context():
        record([event("key-cli", timestamp=YESTERDAY.isoformat()) for _ in range(25)])
    day = YESTERDAY.date().isoformat()
    out = tmp_path / "usage.csv"
    result = app.test_cli_runner().invoke(
        args=["billing", "export", "--start-date", day, "--end-date", day, "--output", str(out)]
    )
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 25 and "exported 25 events" in result.output


def _raw_event(n: int, rng: random.Random) -> dict[str, Any]:
    at = YESTERDAY - timedelta(hours=rng.randrange(5), minutes=rng.randrange(60))
    tokens_input, tokens_output = rng.randrange(1, 9000), rng.randrange(0, 900)
    timed = n % 3 != 0
    return {
        "event_id": f"old-{n}",
        "api_key_hash": hash_api_key(f"old-{n % 3}"),
        "task_type": rng.choice(["review", None]),
        "tokens_input": tokens_input,
        "tokens_output": tokens_output,
        "tokens_cache_read": 0,
        "tokens_total": tokens_input + tokens_output,
        "provider": "anthropic",
        "model": rng.choice(["a", "b"]),
        "cost_total": Decimal(tokens_input) / 10**6,
        "execution_time": Decimal(rng.randrange(1, 90_000)) / 1000 if timed else None,
        "status": rng.choice(["success", "error"]),
        "pricing_status": "priced",
        "created_at": at,
        "received_at": at,
    }


@pytest.mark.parametrize(
    "database", [pytest.param("postgresql", marks=pytest.mark.services), "sqlite"]
)
def test_migration_0008_backfills_the_hourly_rollup_from_the_events_kept(
    app: Flask, settings: Any, tmp_path: Any, database: str
) -> None:
    from flask_migrate import upgrade
    from sqlalchemy import insert

    from app.database import MIGRATIONS_DIR
    from tests.helpers import create_database, create_extra_app, drop_database

    url = create_database() if database == "postgresql" else ""
    try:
        options = {"database_url": url} if url else {"instance_dir": tmp_path}
        base = settings if url else type(settings)()
        old = create_extra_app(base.replace(**options, auto_migrate=False), app)
        rng = random.Random(5)
        with old.app_context():
            upgrade(directory=MIGRATIONS_DIR, revision="0007")
            db.session.execute(
                insert(UsageEvent.__table__), [_raw_event(n, rng) for n in range(300)]
            )
            db.session.commit()
            upgrade(directory=MIGRATIONS_DIR)
        expected = _hourly_from_events(old)
        assert len(expected) > 20 and _hourly_stored(old) == expected
        with old.app_context():
            db.session.remove()
            for engine in db.engines.values():
                engine.dispose()
    finally:
        if url:
            drop_database(url)


def test_the_cleanup_drops_hourly_detail_past_its_retention_and_keeps_the_days(
    app: Flask, settings: Any
) -> None:
    from sqlalchemy import func

    from app.ingest.models import UsageDaily
    from app.jobs.definitions import run_cleanup

    with app.app_context():
        record(_mixed_events("key-ret", 50))
        hours = db.session.scalar(select(func.count()).select_from(UsageHourly))
        kept = settings.usage_hourly_retention_days
        # The day the oldest of these hours passes its retention: two of six hours go.
        oldest = db.session.scalar(select(func.min(UsageHourly.hour)))
        run = run_cleanup(settings, now=oldest + timedelta(days=kept, hours=2, minutes=1))
        deleted = run.counts["hourly_rows_deleted"]
        left = db.session.scalars(select(UsageHourly.hour)).all()
        days = db.session.scalar(select(func.sum(UsageDaily.events)))
        db.session.rollback()
    assert deleted == hours - len(left) > 0
    assert min(left) >= oldest + timedelta(hours=2)
    assert days == 50


@pytest.mark.parametrize(
    ("path", "field"),
    [
        ("/v1/billing/performance?start_date=2026-11-02&end_date=2026-11-01", "end_date"),
        ("/v1/billing/performance?end_date=2026-11-01", "start_date"),
        ("/v1/billing/performance?start_date={today}&end_date={today}&key=abc", "key"),
        ("/v1/billing/performance?start_date={today}&end_date={today}&group_by=model", "group_by"),
        ("/v1/billing/performance?start_date=2020-01-01&end_date=2020-01-02", "start_date"),
        ("/v1/billing/recommendations?days=367", "days"),
        ("/v1/billing/recommendations?days=abc", "days"),
        ("/v1/billing/recommendations?days=3&days=4", "days"),
        ("/v1/billing/usage/export?start_date={today}&end_date={today}&format=xml", "format"),
        ("/v1/billing/usage/export?start_date={today}", "end_date"),
        ("/v1/billing/usage/export?start_date=2020-01-01&end_date={today}", "end_date"),
        (
            "/v1/billing/usage/export?start_date={today}&end_date={today}&customer_id=0",
            "customer_id",
        ),
        # the calendar's last day has no next midnight to end a range at (was a 500)
        ("/v1/billing/performance?start_date=9999-12-30&end_date=9999-12-31", "end_date"),
        (
            "/v1/billing/usage?start_date=9999-12-30&end_date=9999-12-31&granularity=hour",
            "end_date",
        ),
        (
            "/v1/billing/usage/export?start_date=9999-12-30&end_date=9999-12-31&format=jsonl",
            "end_date",
        ),
        (
            "/v1/billing/usage/export?start_date=9999-12-30&end_date=9999-12-31&format=csv",
            "end_date",
        ),
    ],
)
def test_the_other_analytics_endpoints_answer_bad_parameters_with_400s(
    client: FlaskClient, make_customer: Callable[..., BillingCustomer], path: str, field: str
) -> None:
    make_customer("key-400")
    status, body = _get(client, path.format(today=NOW.date().isoformat()), "key-400")
    assert (status, body["error"]["field"]) == (400, field), body


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_an_export_whose_query_fails_is_an_error_before_its_first_byte(
    client: FlaskClient,
    make_customer: Callable[..., BillingCustomer],
    monkeypatch: pytest.MonkeyPatch,
    fmt: str,
) -> None:
    """The database gone as the export starts: a 503 with the JSON error, not a 200
    whose file is cut off (as before: its header went out first)."""
    from sqlalchemy.exc import OperationalError

    from app.analytics import export

    make_customer("key-export-down")

    def gone(*args: Any, **kwargs: Any) -> Any:
        raise OperationalError("SELECT", {}, Exception("server closed the connection"))

    monkeypatch.setattr(export, "_query", gone)
    day = NOW.date().isoformat()
    resp = client.get(
        f"/v1/billing/usage/export?start_date={day}&end_date={day}&format={fmt}",
        headers=auth("key-export-down"),
    )
    assert resp.status_code == 503 and resp.get_json()["error"]["code"] == "unavailable"


@pytest.mark.services  # PostgreSQL's COPY
def test_a_copy_that_fails_is_an_error_and_one_left_early_frees_its_connection(
    app: Flask,
    client: FlaskClient,
    make_customer: Callable[..., BillingCustomer],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """PostgreSQL writes the CSV (COPY … TO STDOUT): its backend dying as the COPY
    starts is a 503 before the first byte; a client that reads one chunk and leaves
    stops the COPY, and the pool serves the next export whole."""
    from app.analytics import export

    make_customer("key-copy")
    with app.app_context():
        record([event("key-copy", timestamp=YESTERDAY.isoformat()) for _ in range(30_000)])
    day = YESTERDAY.date().isoformat()
    path = f"/v1/billing/usage/export?start_date={day}&end_date={day}&format=csv"
    columns = export._postgresql_columns

    def dying(request: Any) -> list[Any]:
        from sqlalchemy import literal_column

        return [literal_column("pg_terminate_backend(pg_backend_pid())::text").label("x")]

    monkeypatch.setattr(export, "_postgresql_columns", dying)
    resp = client.get(path, headers=auth("key-copy"))
    assert resp.status_code == 503 and resp.get_json()["error"]["code"] == "unavailable"
    monkeypatch.setattr(export, "_postgresql_columns", columns)

    for _ in range(3):  # more than the pool would hold, were each left checked out
        early = client.get(path, headers=auth("key-copy"), buffered=False)
        assert early.status_code == 200
        next(iter(early.response))
        early.close()
    assert not [t for t in threading.enumerate() if t.name == "export-copy" and t.is_alive()]
    whole = client.get(path, headers=auth("key-copy")).get_data(as_text=True)
    assert len(list(csv.DictReader(io.StringIO(whole)))) == 30_000


def test_exports_are_never_cached(client: FlaskClient, make_customer) -> None:
    make_customer("key-export-cache")
    day = NOW.date().isoformat()
    resp = client.get(
        f"/v1/billing/usage/export?start_date={day}&end_date={day}",
        headers=auth("key-export-cache"),
    )
    assert resp.status_code == 200 and resp.headers["Cache-Control"] == "no-store"


def test_the_analytics_endpoints_need_a_live_key(client: FlaskClient) -> None:
    day = NOW.date().isoformat()
    for path in (
        f"/v1/billing/performance?start_date={day}&end_date={day}",
        "/v1/billing/forecast",
        "/v1/billing/recommendations",
        f"/v1/billing/usage/export?start_date={day}&end_date={day}",
    ):
        status, body = _get(client, path, "no-such-key")
        assert (status, body["error"]["field"]) == (401, "Authorization"), path
