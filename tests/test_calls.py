"""``GET /v1/billing/calls``: a customer's latest calls, or one by execution id, each with
what it cost and why, from what its event stored when it was priced."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from flask import Flask
from flask.testing import FlaskClient

from app.registry import services
from app.security import hash_api_key
from tests.factories import event
from tests.helpers import auth, count_events, issue_key, record, wait_for

TODAY = datetime.now(UTC).date()
BETWEEN = f"start_date={TODAY - timedelta(days=6)}&end_date={TODAY}"


def _calls(client: FlaskClient, key: str, query: str = "") -> list[dict]:
    resp = client.get(f"/v1/billing/calls?{BETWEEN}{query}", headers=auth(key))
    assert resp.status_code == 200, resp.get_json()
    return resp.get_json()["calls"]


def test_a_call_is_found_by_its_execution_id_with_its_cost_explained(
    app: Flask, client: FlaskClient, make_customer
) -> None:
    """Three calls: flat-priced with cache reads, one that wrote to the cache (priced unit
    by unit by the source), and one of a model with no price. Each line is units × rate;
    the lines add up to the call's cost; the unpriced call says so and has none."""
    make_customer("key-calls")
    now = datetime.now(UTC)
    flat = event(
        "key-calls",
        execution_id="run-flat",
        tokens_input=1000,
        tokens_cache_read=400,
        tokens_output=200,
        timestamp=(now - timedelta(minutes=3)).isoformat(),
    )
    written = event(
        "key-calls",
        execution_id="run-write",
        tokens_input=3000,
        tokens_cache_write=2000,
        tokens_output=50,
        timestamp=(now - timedelta(minutes=2)).isoformat(),
    )
    unpriced = event(
        "key-calls",
        execution_id="run-unpriced",
        model="not-a-model-anyone-prices",
        timestamp=(now - timedelta(minutes=1)).isoformat(),
    )
    with app.app_context():
        record([flat, written, unpriced])

    latest = _calls(client, "key-calls")
    assert [c["execution_id"] for c in latest] == ["run-unpriced", "run-write", "run-flat"]
    by_run = {c["execution_id"]: c for c in latest}
    for run in ("run-flat", "run-write"):
        call = by_run[run]
        assert call["pricing_status"] == "priced" and call["lines"]
        for line in call["lines"]:
            assert Decimal(line["units"]) * Decimal(line["rate"]) == Decimal(line["amount"])
        assert sum(Decimal(line["amount"]) for line in call["lines"]) == Decimal(call["cost"])
    flat_units = {line["unit"]: Decimal(line["units"]) for line in by_run["run-flat"]["lines"]}
    assert flat_units == {"input_tokens": 600, "cache_read_tokens": 400, "output_tokens": 200}
    written_units = {line["unit"] for line in by_run["run-write"]["lines"]}
    assert "cache_write_tokens" in written_units
    assert by_run["run-unpriced"]["cost"] is None and by_run["run-unpriced"]["lines"] == []

    [found] = _calls(client, "key-calls", "&execution_id=run-write")
    assert found == by_run["run-write"]
    assert _calls(client, "key-calls", "&execution_id=no-such-run") == []
    assert [c["execution_id"] for c in _calls(client, "key-calls", "&limit=1")] == ["run-unpriced"]
    assert [
        c["execution_id"] for c in _calls(client, "key-calls", "&model=not-a-model-anyone-prices")
    ] == ["run-unpriced"]


def test_calls_are_the_callers_own_and_filtered_by_key(
    app: Flask, client: FlaskClient, make_customer
) -> None:
    customer = make_customer("key-mine")
    other_key = issue_key(client, customer.id, "ci")
    make_customer("key-theirs")
    with app.app_context():
        record(
            [
                event("key-mine", execution_id="mine-1"),
                event(other_key["key"], execution_id="mine-2"),
                event("key-theirs", execution_id="theirs-1"),
            ]
        )
    assert {c["execution_id"] for c in _calls(client, "key-mine")} == {"mine-1", "mine-2"}
    only = _calls(client, "key-mine", f"&key={other_key['id']}")
    assert [(c["execution_id"], c["key"]["id"]) for c in only] == [("mine-2", other_key["id"])]
    assert _calls(client, "key-mine", "&execution_id=theirs-1") == []


def test_a_malformed_calls_query_is_refused_naming_its_field(
    client: FlaskClient, make_customer
) -> None:
    make_customer("key-bad-calls")
    for query, field in (
        ("&limit=0", "limit"),
        ("&limit=101", "limit"),
        ("&key=999999", "key"),
        ("&execution_id=" + "x" * 129, "execution_id"),
    ):
        resp = client.get(f"/v1/billing/calls?{BETWEEN}{query}", headers=auth("key-bad-calls"))
        assert resp.status_code == 400 and resp.get_json()["error"]["field"] == field, query
    assert client.get(f"/v1/billing/calls?{BETWEEN}").status_code == 401


@pytest.mark.services
def test_a_metered_call_is_found_by_the_execution_id_its_response_carried(
    app: Flask, client: FlaskClient, celery_worker, make_customer
) -> None:
    """Through the middleware and a worker: the id the caller saw finds its one call."""
    make_customer("key-metered-call")
    answers = [
        client.post("/v1/execute/code_generation", json={}, headers=auth("key-metered-call"))
        for _ in range(3)
    ]
    assert {a.status_code for a in answers} == {200}
    services(app).outbox.flush()
    wait_for(lambda: count_events(app, api_key_hash=hash_api_key("key-metered-call")) == 3)
    wanted = answers[1].get_json()["execution_id"]
    [found] = _calls(client, "key-metered-call", f"&execution_id={wanted}")
    assert found["execution_id"] == wanted and found["event_id"] == f"exec-{wanted}"
    assert sum(Decimal(line["amount"]) for line in found["lines"]) == Decimal(found["cost"])
