"""Stripe billing through the real SDK against the local fake Stripe server."""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import time
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select

from app.billing import report as reporting
from app.billing.models import UsageReport
from app.customers.models import BillingCustomer
from app.extensions import db
from app.jobs.definitions import run_report
from app.jobs.runner import JobFailed
from app.registry import services
from app.security import hash_api_key
from tests.factories import CustomerFactory, UsageReportFactory, event
from tests.fake_stripe import FakeStripe
from tests.helpers import ADMIN_TOKEN, WEBHOOK_SECRET, auth, measured, record, wait_for

METER_PATH = "/v1/billing/meter_events"
YESTERDAY = datetime.now(UTC).date() - timedelta(days=1)


def _at(day: date, hour: int = 12) -> str:
    return datetime(day.year, day.month, day.day, hour, tzinfo=UTC).isoformat()


def _use(app: Flask, key: str, day: date, tokens_in: int, tokens_out: int = 0) -> None:
    with app.app_context():
        result = record(
            [event(key, timestamp=_at(day), tokens_input=tokens_in, tokens_output=tokens_out)]
        )
        assert result.inserted == 1


def _report(app: Flask, day: date):
    with app.app_context():
        return run_report(app.config["SETTINGS"], day)


def _ledger(app: Flask) -> list[UsageReport]:
    with app.app_context():
        rows = list(db.session.scalars(select(UsageReport).order_by(UsageReport.id)))
        for row in rows:
            db.session.expunge(row)
        return rows


@pytest.fixture()
def customers(stripe_server: FakeStripe, make_customer):
    """Three customers of some standing (onboarded 40 days ago): the days reported are
    inside their billing periods. (Usage dated before a customer's first period is
    billed on that period's first day: tests/test_plans.py.)"""
    onboarded = datetime.now(UTC) - timedelta(days=40)
    return [
        make_customer(
            f"key-{n}", stripe_customer_id=stripe_server.add_customer(), created_at=onboarded
        )
        for n in range(3)
    ]


def test_create_customer_from_cli_sends_the_hash_never_the_key(
    app: Flask, stripe_server: FakeStripe
) -> None:
    runner = app.test_cli_runner()
    args = [
        "billing",
        "customers",
        "create",
        "--email",
        "a@example.com",
        "--name",
        "Ada",
        "--api-key",
        "sk-raw-secret-1",
    ]
    first = runner.invoke(args=args)
    second = runner.invoke(args=args)
    assert first.exit_code == 0, first.output
    customer_id = json.loads(first.output)["id"]
    assert second.exit_code == 1 and f"already belongs to customer {customer_id}" in second.output
    [request] = stripe_server.requests_to("/v1/customers")  # the second run never called Stripe
    assert request.params["metadata[api_key_hash]"] == hash_api_key("sk-raw-secret-1")
    assert request.headers["idempotency-key"] == f"customer-{hash_api_key('sk-raw-secret-1')}"
    assert all("sk-raw-secret-1" not in json.dumps(r.params) for r in stripe_server.state.requests)
    assert len(stripe_server.state.customers) == 1


def test_retried_customer_creation_makes_one_stripe_customer(
    app: Flask, stripe_server: FakeStripe
) -> None:
    stripe_server.fail_next("/v1/customers", 500)
    with app.app_context():
        from app.customers.services import link_stripe_customer, register_customer

        customer = register_customer("b@example.com", "Bo", hash_api_key("k-b"))
        customer_id = link_stripe_customer(customer, services().stripe)
    assert len(stripe_server.state.customers) == 1 and customer_id in stripe_server.state.customers
    keys = {r.headers["idempotency-key"] for r in stripe_server.requests_to("/v1/customers")}
    assert len(keys) == 1


def test_admin_endpoint_onboards_and_needs_the_admin_token(
    app: Flask, client: FlaskClient, stripe_server: FakeStripe, celery_worker
) -> None:
    body = {"email": "c@example.com", "name": "Cy", "api_key": "k-c"}
    assert client.post("/v1/billing/customers", json=body).status_code == 401
    assert client.post("/v1/billing/customers", json=body, headers=auth("nope")).status_code == 403
    resp = client.post("/v1/billing/customers", json=body, headers=auth(ADMIN_TOKEN))
    assert resp.status_code == 201 and resp.get_json()["stripe_link"] == "pending"
    again = client.post("/v1/billing/customers", json=body, headers=auth(ADMIN_TOKEN))
    error = again.get_json()["error"]  # one customer per key, and no second made
    assert (again.status_code, error["field"]) == (409, "api_key")
    assert f"customer {resp.get_json()['id']}" in error["message"]
    wait_for(lambda: _stripe_id(app, resp.get_json()["id"]) in stripe_server.state.customers)
    assert len(stripe_server.state.customers) == 1
    bad = client.post("/v1/billing/customers", json={**body, "email": 3}, headers=auth(ADMIN_TOKEN))
    assert bad.status_code == 400 and bad.get_json()["error"]["field"] == "email"


def test_two_report_runs_for_one_day_send_one_meter_event_per_customer(
    app: Flask, stripe_server: FakeStripe, customers
) -> None:
    for n, _ in enumerate(customers):
        _use(app, f"key-{n}", YESTERDAY, 1000 * (n + 1), 10)
    _report(app, YESTERDAY)
    _report(app, YESTERDAY)
    events = stripe_server.state.meter_events
    assert len(events) == 3
    by_customer = {e["payload"]["stripe_customer_id"]: e for e in events}
    for n, customer in enumerate(customers):
        sent = by_customer[customer.stripe_customer_id]
        assert sent["payload"]["value"] == str(1000 * (n + 1) + 10)
        assert re.fullmatch(
            rf"ub-[0-9a-f]{{16}}-{customer.id}-{YESTERDAY:%Y%m%d}-0", sent["identifier"]
        )
        assert sent["timestamp"] == int(
            datetime(
                YESTERDAY.year, YESTERDAY.month, YESTERDAY.day, 23, 59, 59, tzinfo=UTC
            ).timestamp()
        )
    for request in stripe_server.requests_to(METER_PATH):
        assert request.params["event_name"] == "llm_usage"
        assert request.headers["idempotency-key"] == request.params["identifier"]
    assert [r.status for r in _ledger(app)] == ["sent"] * 3


def test_rate_limited_then_ok_ends_with_one_event(
    app: Flask, stripe_server: FakeStripe, customers
) -> None:
    _use(app, "key-0", YESTERDAY, 500)
    stripe_server.fail_next(METER_PATH, 429, 500, "drop")
    _report(app, YESTERDAY)
    assert len(stripe_server.state.meter_events) == 1
    attempts = stripe_server.requests_to(METER_PATH)
    assert [r.status for r in attempts] == [429, 500, 0, 200]
    assert len({r.headers["idempotency-key"] for r in attempts}) == 1


def test_a_failing_customer_does_not_block_the_others_and_is_retried(
    app: Flask, stripe_server: FakeStripe, customers
) -> None:
    for n in range(3):
        _use(app, f"key-{n}", YESTERDAY, 100)
    stripe_server.state.failing_customers.add(customers[1].stripe_customer_id)
    with pytest.raises(JobFailed):
        _report(app, YESTERDAY)
    assert {e["payload"]["stripe_customer_id"] for e in stripe_server.state.meter_events} == {
        customers[0].stripe_customer_id,
        customers[2].stripe_customer_id,
    }
    assert [r.status for r in _ledger(app)] == ["sent", "failed", "sent"]
    stripe_server.state.failing_customers.clear()
    _report(app, YESTERDAY)
    assert len(stripe_server.state.meter_events) == 3
    assert [r.status for r in _ledger(app)] == ["sent", "sent", "sent"]


def test_a_late_event_is_reported_on_the_next_run(
    app: Flask, stripe_server: FakeStripe, customers
) -> None:
    two_days_ago = YESTERDAY - timedelta(days=1)
    _use(app, "key-0", two_days_ago, 100)
    _report(app, two_days_ago)
    _use(app, "key-0", two_days_ago, 40)  # arrives after its day was reported
    _use(app, "key-0", YESTERDAY, 7)
    _report(app, YESTERDAY)
    values = [e["payload"]["value"] for e in stripe_server.state.meter_events]
    assert values == ["100", "47"]
    assert sum(int(v) for v in values) == 147


def test_fractions_carry_to_the_next_day_in_cost_mode(
    app: Flask, stripe_server: FakeStripe, customers, monkeypatch
) -> None:
    settings = app.config["SETTINGS"]
    monkeypatch.setitem(
        app.config,
        "SETTINGS",
        settings.replace(billing_quantity="cost", billing_cost_unit=Decimal("0.01")),
    )
    day1, day2 = YESTERDAY - timedelta(days=1), YESTERDAY
    # claude-3-5-sonnet input is $3/MTok: 1,500 tokens = $0.0045 = 0.45 cents each day
    for day in (day1, day2, day2):
        _use(app, "key-0", day, 1500)
    _report(app, day1)  # 0.45 cents: nothing whole to bill yet
    _report(app, day2)  # 0.45 + 0.9 = 1.35 cents → 1
    assert [e["payload"]["value"] for e in stripe_server.state.meter_events] == ["1"]
    [row] = _ledger(app)
    assert row.cumulative_exact == Decimal("1.35") and row.quantity_unit == "usd/0.01"


def test_crash_after_stripe_answered_does_not_bill_twice(
    app: Flask, stripe_server: FakeStripe, customers, monkeypatch
) -> None:
    _use(app, "key-0", YESTERDAY, 300)
    real_mark_sent = reporting.mark_sent

    def crash(report: UsageReport) -> None:
        raise SystemExit("worker died before recording the answer")

    monkeypatch.setattr(reporting, "mark_sent", crash)
    with pytest.raises(SystemExit):
        _report(app, YESTERDAY)
    with app.app_context():
        db.session.rollback()
        from app.jobs.models import JobRun

        # The run died with its process; this test's process lives on, holding it.
        db.session.query(JobRun).delete()
        db.session.commit()
    monkeypatch.setattr(reporting, "mark_sent", real_mark_sent)
    _report(app, YESTERDAY)
    assert len(stripe_server.state.meter_events) == 1
    assert (
        len(stripe_server.requests_to(METER_PATH)) == 2
    )  # the re-send was answered from Stripe's idempotency cache
    assert [r.status for r in _ledger(app)] == ["sent"]


def test_portal_returns_the_session_url(
    client: FlaskClient, stripe_server: FakeStripe, customers
) -> None:
    body = {"return_url": "https://app.example.com/settings/billing"}
    resp = client.post("/v1/billing/portal", json=body, headers=auth("key-0"))
    assert resp.status_code == 200
    [session] = stripe_server.state.portal_sessions
    assert resp.get_json() == {"url": session["url"]}
    assert session["customer"] == customers[0].stripe_customer_id
    assert session["return_url"] == body["return_url"]


@pytest.mark.parametrize(
    ("key", "body", "status", "field"),
    [
        ("key-none", {"return_url": "https://app.example.com/x"}, 401, "Authorization"),
        ("key-0", {}, 400, "return_url"),
        ("key-0", {"return_url": "javascript:alert(1)"}, 400, "return_url"),
        ("key-0", {"return_url": "https://evil.example.net/x"}, 400, "return_url"),
        ("key-0", {"return_url": "https://app.example.com.evil.net/x"}, 400, "return_url"),
    ],
)
def test_portal_refuses(
    client: FlaskClient, customers, key: str, body: dict, status: int, field: str
) -> None:
    resp = client.post("/v1/billing/portal", json=body, headers=auth(key))
    assert resp.status_code == status and resp.get_json()["error"]["field"] == field


def _signed(payload: bytes, secret: str = WEBHOOK_SECRET, at: int | None = None) -> str:
    at = at or int(time.time())
    signature = hmac.new(secret.encode(), f"{at}.".encode() + payload, hashlib.sha256).hexdigest()
    return f"t={at},v1={signature}"


def _webhook(client: FlaskClient, event_body: dict, signature: str | None):
    payload = json.dumps(event_body).encode()
    headers = {"Content-Type": "application/json"}
    if signature is not None:
        headers["Stripe-Signature"] = signature if signature != "sign" else _signed(payload)
    return client.post("/v1/billing/webhooks/stripe", data=payload, headers=headers)


def test_webhooks_keep_status_current_and_refuse_forgeries(
    app: Flask, client: FlaskClient, customers
) -> None:
    cus = customers[0].stripe_customer_id
    failed = {
        "id": "evt_1",
        "type": "invoice.payment_failed",
        "created": int(time.time()),
        "data": {"object": {"customer": cus}},
    }
    sub = {
        "id": "evt_2",
        "type": "customer.subscription.updated",
        "created": int(time.time()),
        "data": {"object": {"customer": cus, "status": "past_due"}},
    }
    payload = json.dumps(failed).encode()
    assert _webhook(client, failed, None).status_code == 400
    assert _webhook(client, failed, _signed(payload, secret="whsec_wrong")).status_code == 400
    assert (
        _webhook(client, failed, _signed(payload, at=int(time.time()) - 3600)).status_code == 400
    )  # replay of an old delivery
    ahead = _webhook(client, failed, _signed(payload, at=int(time.time()) + 360))
    assert (ahead.status_code, ahead.get_json()["error"]["field"]) == (400, "Stripe-Signature")
    assert _webhook(client, failed, "sign").get_json() == {"status": "processed"}
    assert _webhook(client, failed, "sign").get_json() == {"status": "duplicate"}
    assert _webhook(client, sub, "sign").status_code == 200
    with app.app_context():
        customer = db.session.scalar(
            select(BillingCustomer).where(BillingCustomer.stripe_customer_id == cus)
        )
        assert (
            customer.payment_status == "payment_failed"
            and customer.subscription_status == "past_due"
        )


def test_a_meter_event_stripe_recorded_before_answering_500_is_sent_once_not_failed(
    app: Flask, stripe_server: FakeStripe, customers
) -> None:
    """Stripe records the event and answers 500; the retry with the same identifier is
    refused as one it already holds. That is our event, sent: the ledger says so, no
    later run sends it again, and the customer's next day is billed as usual."""
    _use(app, "key-0", YESTERDAY - timedelta(days=1), 1000)
    stripe_server.fail_next(METER_PATH, "recorded 500")
    _report(app, YESTERDAY - timedelta(days=1))
    _use(app, "key-0", YESTERDAY, 500)
    _report(app, YESTERDAY)
    sent = [e for e in stripe_server.state.meter_events if e["payload"]["value"] != "0"]
    assert [
        e["payload"]["value"]
        for e in sent
        if e["payload"]["stripe_customer_id"] == customers[0].stripe_customer_id
    ] == ["1000", "500"]
    with app.app_context():
        statuses = db.session.scalars(
            select(UsageReport.status).where(UsageReport.customer_id == customers[0].id)
        ).all()
    assert statuses == ["sent", "sent"]


def test_one_customers_idempotency_conflict_stops_no_other(
    app: Flask, stripe_server: FakeStripe, customers
) -> None:
    """Stripe answers one customer with ``idempotency_error``: that customer's report
    fails (and is retried), every other customer of the run is billed."""
    for n in range(3):
        _use(app, f"key-{n}", YESTERDAY, 100 * (n + 1))
    with app.app_context():  # the first customer's identifier, remembered with other details
        UsageReportFactory(
            customer_id=customers[0].id,
            day=YESTERDAY,
            identifier="ub-conflict-0",
            status="failed",
            attempts=1,
        )
    stripe_server.state.idempotency["ub-conflict-0"] = (METER_PATH, {"other": "details"}, 200, {})
    with pytest.raises(JobFailed, match=f"customer {customers[0].id}"):
        _report(app, YESTERDAY)
    billed = {e["payload"]["stripe_customer_id"] for e in stripe_server.state.meter_events}
    assert billed == {customers[1].stripe_customer_id, customers[2].stripe_customer_id}


@pytest.mark.services  # a second PostgreSQL database
def test_meter_identifiers_are_unique_beyond_one_database(
    app: Flask, stripe_server: FakeStripe, customers, settings
) -> None:
    """A second deployment on the same Stripe account (staging, or this one rebuilt
    from nothing) numbers its customers and days the same: its identifiers must not
    collide with ours, or Stripe would refuse its events as already held."""
    from tests.helpers import create_database, create_extra_app, drop_database

    _use(app, "key-0", YESTERDAY, 100)
    _report(app, YESTERDAY)
    url = create_database()
    try:
        other = create_extra_app(settings.replace(database_url=url), app)
        with other.app_context():
            twin = CustomerFactory(
                api_key="key-0", stripe_customer_id=customers[0].stripe_customer_id
            )
            assert twin.id == customers[0].id  # the same numbers
            record([event("key-0", timestamp=_at(YESTERDAY), tokens_input=100, tokens_output=0)])
        _report(other, YESTERDAY)
        with other.app_context():
            db.session.remove()
            for engine in db.engines.values():
                engine.dispose()
    finally:
        drop_database(url)
    identifiers = [e["identifier"] for e in stripe_server.state.meter_events]
    assert len(identifiers) == len(set(identifiers)) == 2


def test_500_429_and_timeouts_during_the_report_bill_each_customer_day_once(
    app: Flask, stripe_server: FakeStripe, customers
) -> None:
    """A timed-out call that Stripe did record is answered from its idempotency cache."""
    days = [YESTERDAY - timedelta(days=1), YESTERDAY]
    for day in days:
        for n in range(3):
            _use(app, f"key-{n}", day, 100 * (n + 1))
    # Enough failures in a row that one run gives up on a customer and the task's retry
    # (autoretry_for=JobFailed) has to finish the day.
    faults = [500, "slow", 429, "drop", "slow", 500, 429, "slow", 500]
    stripe_server.fail_next(METER_PATH, *faults)
    runs = 0
    for day in days:
        for _ in range(5):
            runs += 1
            try:
                _report(app, day)
                break
            except JobFailed:
                continue
    _report(app, days[1])  # a re-run of the last day sends nothing more
    billed: dict[tuple[str, int], int] = {}
    for sent in stripe_server.state.meter_events:
        key = (sent["payload"]["stripe_customer_id"], sent["timestamp"])
        billed[key] = billed.get(key, 0) + 1
    expected = len(customers) * len(days)
    duplicated = sum(n - 1 for n in billed.values())
    statuses = [r.status for r in stripe_server.requests_to(METER_PATH)]
    measured(
        f"stripe faults {statuses} over {runs} runs: customer-days={expected} "
        f"billed={len(billed)} duplicated={duplicated} missing={expected - len(billed)}"
    )
    assert runs > len(days) and statuses.count(0) == 4  # 3 timeouts, 1 dropped connection
    assert (len(billed), duplicated) == (expected, 0)
    values = sorted(int(e["payload"]["value"]) for e in stripe_server.state.meter_events)
    assert values == [100, 100, 200, 200, 300, 300]
    assert {r.status for r in _ledger(app)} == {"sent"}


def test_an_unsettled_report_past_stripes_dedupe_window_goes_to_an_operator(
    app: Flask, stripe_server: FakeStripe, customers
) -> None:
    _use(app, "key-0", YESTERDAY, 250)
    stripe_server.fail_next(METER_PATH, *[500] * 6)  # every attempt of the run fails
    with pytest.raises(JobFailed):
        _report(app, YESTERDAY)
    [failed] = _ledger(app)
    assert failed.status == "failed" and failed.attempts == 1
    with app.app_context():  # the retries ran out; a day later Stripe has forgotten the id
        row = db.session.get(UsageReport, failed.id)
        row.created_at = datetime.now(UTC) - timedelta(hours=25)
        db.session.commit()
    sent_before = len(stripe_server.requests_to(METER_PATH))
    _report(app, YESTERDAY)
    assert len(stripe_server.requests_to(METER_PATH)) == sent_before  # not sent blind again
    [parked] = _ledger(app)
    assert parked.status == "needs_manual" and "check Stripe" in parked.last_error

    runner = app.test_cli_runner()
    status = runner.invoke(args=["billing", "status"])
    assert status.exit_code == 1
    assert json.loads(status.output)["manual_reports"]["reports"][0]["identifier"] == (
        parked.identifier
    )
    resolved = runner.invoke(
        args=["billing", "resolve-report", parked.identifier, "--note", "invoice item ii_123"]
    )
    assert resolved.exit_code == 0, resolved.output
    assert _ledger(app)[0].status == "resolved"
    _report(app, YESTERDAY)  # settled by hand: never billed again
    assert len(stripe_server.requests_to(METER_PATH)) == sent_before
    assert (
        json.loads(runner.invoke(args=["billing", "status"]).output)["manual_reports"]["count"] == 0
    )


def _stripe_id(app: Flask, customer_id: int) -> str | None:
    with app.app_context():
        customer = db.session.get(BillingCustomer, customer_id)
        found = customer.stripe_customer_id if customer else None
        db.session.rollback()
        return found


def test_onboarding_while_stripe_is_down_links_the_customer_once_it_answers(
    app: Flask, client: FlaskClient, stripe_server: FakeStripe
) -> None:
    """The customer exists and is metered at once; the link waits for Stripe, and the
    daily report links whoever the background task could not."""
    for _ in range(20):
        stripe_server.fail_next("/v1/customers", 503)
    body = {"email": "d@example.com", "name": "Di", "api_key": "k-down"}
    resp = client.post("/v1/billing/customers", json=body, headers=auth(ADMIN_TOKEN))
    assert resp.status_code == 201 and resp.get_json()["stripe_link"] == "pending"
    with app.app_context():
        from app.customers.services import link_unlinked_customers

        settings, stripe = app.config["SETTINGS"], services().stripe
        assert link_unlinked_customers(settings, stripe) == (0, 1)  # Stripe down: kept, not lost
        stripe_server.reset()
        link_unlinked_customers(settings, stripe)  # or the queued task, retrying, got there first
    assert _stripe_id(app, resp.get_json()["id"]) in stripe_server.state.customers
    assert len(stripe_server.state.customers) == 1


def test_a_link_retry_a_test_leaves_behind_does_not_run_in_the_next(
    app: Flask, make_customer, stripe_server: FakeStripe, celery_worker
) -> None:
    """The suite's own isolation (CI's run without services once failed on it): a
    link retried after the test that queued it ended linked the next test's customer,
    who had the same id. Between tests the session's worker drops what it holds."""
    from app.customers.services import LINK_TASK
    from tests.conftest import _forget_unrecorded, held_requests

    customer = make_customer("k-left-behind", stripe_customer_id=None)
    link = services(app).celery.send_task(LINK_TASK, args=[customer.id], countdown=2)
    # Fetched, and held until it is due: this link, not any request held (an ended
    # test's, revoked but held until due, answered at once, and CI's run then linked).
    wait_for(lambda: link.id in {r.id for r in held_requests(celery_worker)}, timeout=5)
    _forget_unrecorded(app)  # as between two tests
    time.sleep(3)
    assert _stripe_id(app, customer.id) is None
    assert stripe_server.state.customers == {}


def test_onboarding_without_a_stripe_key_creates_the_customer_here(
    app: Flask, settings, tmp_path
) -> None:
    from tests.helpers import create_extra_app

    # The same database (the embedded default keeps it in the instance folder), its own spool.
    local = settings.replace(
        stripe_api_key="", meter_spool_dir=str(tmp_path / "spool"), auto_migrate=False
    )
    client = create_extra_app(local, app).test_client()
    body = {"email": "e@example.com", "name": "Ed", "api_key": "k-nostripe"}
    resp = client.post("/v1/billing/customers", json=body, headers=auth(ADMIN_TOKEN))
    assert resp.status_code == 201, resp.get_json()
    assert resp.get_json()["stripe_link"] == "not_configured"
    assert (
        client.get(
            "/v1/billing/usage?start_date=2026-01-01&end_date=2026-01-02",
            headers=auth("k-nostripe"),
        ).status_code
        == 200
    )
