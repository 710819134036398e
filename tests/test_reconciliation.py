"""Reconciliation: the ledger of what was sent against Stripe's meter event summaries,
through the real SDK against the fake Stripe, which answers the summaries as Stripe does."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta
from typing import Any

import stripe
from flask import Flask

from app.billing.models import ReconciliationDifference
from app.extensions import db
from app.jobs.definitions import RECONCILE_JOB, run_reconciliation, run_report
from tests.factories import event
from tests.fake_stripe import API_KEY, METER_ID, FakeStripe
from tests.helpers import record


def _days() -> list[date]:
    """The three days before today, as of the test that asks: reconciliation runs up to
    yesterday, and a date taken when the module loads is another day's after midnight
    (CI's run that crossed it failed this way)."""
    today = datetime.now(UTC).date()
    return [today - timedelta(days=n) for n in (3, 2, 1)]


def _at(day: date) -> str:
    return datetime(day.year, day.month, day.day, 12, tzinfo=UTC).isoformat()


def _billed(
    app: Flask, stripe_server: FakeStripe, make_customer: Any, customers: int = 2
) -> list[date]:
    """Usage on three days for each customer, each day reported to the fake Stripe;
    the days."""
    for n in range(customers):
        make_customer(f"key-rec-{n}", stripe_customer_id=stripe_server.add_customer())
    days = _days()
    with app.app_context():
        for day in days:
            record(
                [
                    event(f"key-rec-{n}", timestamp=_at(day), tokens_input=100 * (n + 1))
                    for n in range(customers)
                ]
            )
            run_report(app.config["SETTINGS"], day)
    assert len(stripe_server.state.meter_events) == customers * len(days)
    return days


def _reconcile(app: Flask) -> dict[str, Any]:
    with app.app_context():
        return run_reconciliation(app.config["SETTINGS"]).counts


def _status(app: Flask) -> tuple[int, dict[str, Any]]:
    result = app.test_cli_runner().invoke(args=["billing", "status"])
    return result.exit_code, json.loads(result.output)


def test_a_ledger_stripe_agrees_with_has_no_difference(
    app: Flask, stripe_server: FakeStripe, make_customer: Any
) -> None:
    days = _billed(app, stripe_server, make_customer)
    counts = _reconcile(app)
    assert counts["customers"] == 2 and counts["open_differences"] == 0
    assert counts["last_day"] == days[-1].isoformat()
    _, status = _status(app)
    assert status["reconciliation"]["open_differences"] == 0
    assert status["jobs"][RECONCILE_JOB]["status"] == "succeeded"
    summaries = stripe_server.requests_to(f"/v1/billing/meters/{METER_ID}/event_summaries")
    assert {r.params["value_grouping_window"] for r in summaries} == {"day"}


def test_a_planted_difference_is_found_fails_the_status_and_closes_when_mended(
    app: Flask, stripe_server: FakeStripe, make_customer: Any
) -> None:
    _billed(app, stripe_server, make_customer)
    events = stripe_server.state.meter_events
    lost = events.pop(1)  # Stripe lost one meter event: one customer, one day
    counts = _reconcile(app)
    assert counts["open_differences"] == 1
    code, status = _status(app)
    assert code == 1 and status["healthy"] is False
    [difference] = status["reconciliation"]["differences"]
    assert (difference["sent"], difference["in_stripe"]) == (lost["payload"]["value"], "0")
    lost_day = datetime.fromtimestamp(lost["timestamp"], UTC).date()
    assert difference["day"] == lost_day.isoformat()
    events.append({**lost, "payload": {**lost["payload"], "value": "7"}})  # a wrong value
    _reconcile(app)
    _, status = _status(app)
    assert status["reconciliation"]["differences"][0]["in_stripe"] == "7"
    events[-1] = lost  # mended
    counts = _reconcile(app)
    assert (counts["open_differences"], counts["resolved"]) == (0, 1)
    with app.app_context():
        [row] = db.session.query(ReconciliationDifference).all()
        assert row.resolved_at is not None
        db.session.rollback()


def test_usage_stripe_holds_that_the_ledger_never_sent_is_a_difference(
    app: Flask, stripe_server: FakeStripe, make_customer: Any
) -> None:
    _billed(app, stripe_server, make_customer, customers=1)
    stray = dict(stripe_server.state.meter_events[0], identifier="someone-else")
    stripe_server.state.meter_events.append(stray)
    assert _reconcile(app)["open_differences"] == 1


def test_the_fake_pages_summaries_newest_first_as_stripe_does(
    stripe_server: FakeStripe,
) -> None:
    customer = stripe_server.add_customer()
    start = datetime.combine(_days()[0], datetime.min.time(), tzinfo=UTC)
    for n in range(3):
        stripe_server.state.meter_events.append(
            {
                "timestamp": int((start + timedelta(days=n, hours=5)).timestamp()),
                "payload": {"stripe_customer_id": customer, "value": str(n + 1)},
            }
        )
    client = stripe.StripeClient(API_KEY, base_addresses={"api": stripe_server.url})
    listed = client.v1.billing.meters.event_summaries.list(
        METER_ID,
        params={
            "customer": customer,
            "start_time": int(start.timestamp()),
            "end_time": int((start + timedelta(days=3)).timestamp()),
            "value_grouping_window": "day",
            "limit": 2,
        },
    )
    assert listed.has_more is True
    values = [s.aggregated_value for s in listed.auto_paging_iter()]
    assert values == [3, 2, 1]
