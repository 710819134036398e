"""Prepaid credits: grants burnt in order as usage is recorded, expiries at their instant,
admission at a zero balance, buying and auto-recharge through Stripe, and a report
that bills only what credits did not cover."""

from __future__ import annotations

import json
import uuid
from datetime import timedelta
from decimal import Decimal

import pytest
from flask import Flask
from flask.testing import FlaskClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select
from standardwebhooks import Webhook

from app.budgets.models import BudgetAlert
from app.budgets.spend import Estimates, credit_rule, rebuild
from app.columns import utcnow
from app.config import Settings
from app.credits.ledger import add_grant, balance, burn_committed, open_account, remaining
from app.credits.models import CreditAccount, CreditEntry, CreditGrant, CreditRecharge, EntryKind
from app.extensions import db
from app.ingest.models import UsageEvent
from app.jobs.definitions import run_report
from app.registry import services
from app.security import hash_api_key
from tests.factories import event
from tests.fake_stripe import FakeStripe
from tests.helpers import (
    ADMIN_TOKEN,
    Receiver,
    at_once,
    auth,
    measured,
    metered_call,
    record,
    stripe_event,
    subscribe,
    wait_for,
)

pytestmark = pytest.mark.services
CALL_COST = Decimal("0.00725")  # the stand-in /v1/execute: gpt-4o, 1,000 in (200 cached), 500 out
EVENT_COST = Decimal("0.0045")  # the factory's event: gpt-4o, 1,000 in, 200 out
AGE = Settings().max_event_age_days
_DEFAULTS = Estimates.from_settings(Settings())


def _grant(client: FlaskClient, customer_id: int, **fields: object) -> dict:
    resp = client.post(
        f"/v1/billing/customers/{customer_id}/credits/grants",
        json={"category": "promotional", **fields},
        headers=auth(ADMIN_TOKEN),
    )
    assert resp.status_code == 201, resp.get_json()
    return resp.get_json()


def _prepaid(client: FlaskClient, customer_id: int, overage: str = "bill") -> dict:
    resp = client.put(
        f"/v1/billing/customers/{customer_id}/credits",
        json={"overage": overage},
        headers=auth(ADMIN_TOKEN),
    )
    assert resp.status_code == 200, resp.get_json()
    return resp.get_json()


def _credits(client: FlaskClient, key: str) -> dict:
    resp = client.get("/v1/billing/credits", headers=auth(key))
    assert resp.status_code == 200, resp.get_json()
    return resp.get_json()


def _ledger_sum(app: Flask, customer_id: int) -> Decimal:
    with app.app_context():
        total = db.session.scalar(
            select(func.coalesce(func.sum(CreditEntry.amount), 0)).where(
                CreditEntry.customer_id == customer_id, CreditEntry.kind != EntryKind.OVERAGE
            )
        )
        db.session.rollback()
        return Decimal(total)


def test_grants_burn_in_order_and_the_balance_is_the_ledgers_sum(
    app: Flask, client: FlaskClient, make_customer
) -> None:
    """Lowest priority number first, then the soonest to expire, then the oldest; what
    no grant covers is overage, outside the balance. The API's balance is the table's."""
    customer = make_customer("key-prepaid")
    _prepaid(client, customer.id)
    soon = (utcnow() + timedelta(days=2)).isoformat()
    later = (utcnow() + timedelta(days=9)).isoformat()
    last = _grant(client, customer.id, amount="0.02", priority=60)
    second = _grant(client, customer.id, amount="0.01", priority=50, expires_at=later)
    first = _grant(client, customer.id, amount="0.01", priority=50, expires_at=soon)
    now = utcnow()
    with app.app_context():
        record([event("key-prepaid", timestamp=now.isoformat()) for _ in range(4)])  # $0.018
        burnt = burn_committed(customer.id, now, AGE)
    assert burnt.paid == 4 * EVENT_COST and burnt.overage == 0
    shown = {g["id"]: Decimal(g["remaining"]) for g in _credits(client, "key-prepaid")["grants"]}
    assert shown == {first["id"]: 0, second["id"]: Decimal("0.002"), last["id"]: Decimal("0.02")}
    with app.app_context():
        record([event("key-prepaid", timestamp=now.isoformat()) for _ in range(6)])  # $0.027
        burnt = burn_committed(customer.id, now, AGE)
    assert (burnt.paid, burnt.overage) == (Decimal("0.022"), Decimal("0.005"))
    answer = _credits(client, "key-prepaid")
    assert Decimal(answer["balance"]) == 0 == _ledger_sum(app, customer.id)
    assert Decimal(answer["uncovered"]) == Decimal("0.005")


def test_an_expiry_takes_effect_at_its_instant(app: Flask, client: FlaskClient, make_customer):
    """Usage paid after a grant's expiry is not paid from it; what was left of it leaves
    the balance in an entry dated at the expiry."""
    customer = make_customer("key-expiring")
    now = utcnow()
    with app.app_context():
        expiring, _ = add_grant(
            customer.id,
            Decimal("1"),
            "promotional",
            "test:a",
            now,
            AGE,
            expires_at=now + timedelta(hours=1),
        )
        db.session.commit()
        record([event("key-expiring", timestamp=now.isoformat())])
        burn_committed(customer.id, now, AGE)
        assert remaining(expiring) == Decimal(1) - EVENT_COST
        record([event("key-expiring", timestamp=now.isoformat())])
        later = now + timedelta(hours=2)
        burnt = burn_committed(customer.id, later, AGE)
        assert (burnt.paid, burnt.overage) == (0, EVENT_COST)
        expiry = db.session.scalar(select(CreditEntry).where(CreditEntry.kind == EntryKind.EXPIRY))
        assert expiry.at == expiring.expires_at and expiry.amount == EVENT_COST - 1
        assert balance(customer.id) == 0
        db.session.rollback()


@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    grants=st.lists(
        st.tuples(
            st.integers(1, 400),  # cents
            st.integers(0, 3),  # priority
            st.one_of(st.none(), st.integers(1, 72)),  # hours to expiry
        ),
        min_size=1,
        max_size=5,
    ),
    batches=st.lists(st.tuples(st.integers(1, 40), st.integers(0, 96)), min_size=1, max_size=4),
)
def test_the_ledger_sums_to_the_grants_less_what_was_burnt_and_expired(
    app: Flask, make_customer, grants, batches
) -> None:
    """For random grants and usage, burnt at random later instants: each burn pays in
    order from live grants, never more than a grant holds, and the balance is the
    grants less burns and expiries; paid and uncovered add up to what is owed."""
    key = f"key-{uuid.uuid4().hex}"
    customer = make_customer(key)
    start = utcnow()
    with app.app_context():
        for n, (amount, priority, hours) in enumerate(grants):
            add_grant(
                customer.id,
                Decimal(amount) / 100,
                "promotional",
                f"prop:{customer.id}:{n}",
                start,
                AGE,
                priority=priority,
                expires_at=start + timedelta(hours=hours) if hours else None,
            )
        db.session.commit()
        paid = uncovered = Decimal(0)
        for calls, hours in sorted(batches, key=lambda b: b[1]):
            record([event(key, timestamp=start.isoformat()) for _ in range(calls)])
            burnt = burn_committed(customer.id, start + timedelta(hours=hours), AGE)
            paid, uncovered = paid + burnt.paid, uncovered + burnt.overage
        owed = EVENT_COST * sum(calls for calls, _ in batches)
        sums = dict(
            db.session.execute(
                select(CreditEntry.kind, func.sum(CreditEntry.amount))
                .where(CreditEntry.customer_id == customer.id)
                .group_by(CreditEntry.kind)
            ).all()
        )
        granted = sum((Decimal(c) / 100 for c, _, _ in grants), Decimal(0))
        assert sums.get("grant") == granted
        assert -sums.get("burn", 0) == paid and sums.get("overage", 0) == uncovered
        assert paid + uncovered == owed
        assert balance(customer.id) == granted + sums.get("burn", 0) + sums.get("expiry", 0)
        for grant in db.session.scalars(
            select(CreditGrant).where(CreditGrant.customer_id == customer.id)
        ):
            assert remaining(grant) >= 0
        db.session.rollback()


def test_a_batch_delivered_twice_burns_once(
    app: Flask, client: FlaskClient, make_customer, celery_worker
) -> None:
    """The worker burns after recording; the same batch again stores nothing and owes
    nothing more, so it burns nothing."""
    from tasks.ingest import record_events_task

    customer = make_customer("key-redelivered")
    _grant(client, customer.id, amount="1")
    batch = [event("key-redelivered") for _ in range(3)]
    for batch_id in ("redelivered-1", "redelivered-1", "redelivered-2"):  # again, and resent
        record_events_task.apply(args=[batch], kwargs={"batch_id": batch_id}).get()
    with app.app_context():
        burns = db.session.scalars(
            select(CreditEntry.amount).where(CreditEntry.kind == EntryKind.BURN)
        ).all()
        db.session.rollback()
    assert sum(burns) == -3 * EVENT_COST
    assert Decimal(_credits(client, "key-redelivered")["balance"]) == 1 - 3 * EVENT_COST


def _burnt(app: Flask, customer_id: int) -> Decimal:
    with app.app_context():
        total = db.session.scalar(
            select(func.coalesce(func.sum(CreditEntry.amount), 0)).where(
                CreditEntry.customer_id == customer_id, CreditEntry.kind == EntryKind.BURN
            )
        )
        db.session.rollback()
        return -Decimal(total)


def _settled(app: Flask, enforcing: Flask, customer_id: int, key: str, calls: int) -> None:
    """Wait until the worker has recorded and burnt ``calls`` calls, and mirrored the
    burn in Redis."""
    services(enforcing).outbox.flush()
    wait_for(lambda: _stored(app, key) == calls)
    wait_for(lambda: _burnt(app, customer_id) == calls * CALL_COST)
    wait_for(lambda: _mirrored(app, customer_id) == int(calls * CALL_COST * 10**6))


def _stored(app: Flask, key: str) -> int:
    with app.app_context():
        n = db.session.scalar(
            select(func.count())
            .select_from(UsageEvent)
            .where(UsageEvent.api_key_hash == hash_api_key(key))
        )
        db.session.rollback()
        return int(n or 0)


def _mirrored(app: Flask, customer_id: int) -> int | None:
    with app.app_context():
        rule = credit_rule(customer_id)
        db.session.rollback()
    return services(app).budget_counters.spent_units(rule, rule.period_at(utcnow()))


def test_admission_stops_a_blocking_customer_at_a_zero_balance(
    app: Flask, client: FlaskClient, enforcing: Flask, make_customer
) -> None:
    """A balance that fits 10 calls, 2 spent: of 64 calls at once, the 8 that fit are
    served (one script checks the balance and reserves, atomically, with every budget);
    the others get 402 credits_exhausted and are never billed. Overshoot: the calls
    admitted that cost more than their estimate, zero here."""
    customer = make_customer("key-blocking")
    _prepaid(client, customer.id, overage="block")
    _grant(client, customer.id, amount=str(10 * CALL_COST))
    warm = enforcing.test_client()
    for n in (1, 2):
        assert metered_call(warm, "key-blocking").status_code == 200
        _settled(app, enforcing, customer.id, "key-blocking", n)
    answers = at_once(enforcing, "key-blocking")
    served = sum(a.status_code == 200 for a in answers)
    refused = [a for a in answers if a.status_code == 402]
    _settled(app, enforcing, customer.id, "key-blocking", 2 + served)
    spent = _burnt(app, customer.id)
    measured(
        f"credits admission, 64 concurrent calls: served={served} refused={len(refused)} "
        f"burnt={spent} balance={10 * CALL_COST} overshoot={max(Decimal(0), spent - 10 * CALL_COST)}"
    )
    assert served == 8 and spent == 10 * CALL_COST
    assert {a.get_json()["error"]["code"] for a in refused} == {"credits_exhausted"}
    assert Decimal(_credits(client, "key-blocking")["balance"]) == 0
    with app.app_context():
        assert (
            db.session.scalar(
                select(func.count())
                .select_from(CreditEntry)
                .where(CreditEntry.kind == EntryKind.OVERAGE)
            )
            == 0
        )
        db.session.rollback()
    _grant(client, customer.id, amount="1")  # a top-up: served again at once
    assert metered_call(warm, "key-blocking").status_code == 200


def test_redis_emptied_rebuilds_the_balance_from_postgresql(
    app: Flask, client: FlaskClient, enforcing: Flask, make_customer
) -> None:
    """Neither zero nor doubled: the rebuilt rule holds what the grants may pay and what
    they paid, as PostgreSQL does."""
    customer = make_customer("key-rebuilt")
    _prepaid(client, customer.id, overage="block")
    _grant(client, customer.id, amount=str(3 * CALL_COST))
    warm = enforcing.test_client()
    assert metered_call(warm, "key-rebuilt").status_code == 200
    _settled(app, enforcing, customer.id, "key-rebuilt", 1)
    counters = services(app).budget_counters
    counters.redis.flushdb()
    with app.app_context():
        rebuild(counters, utcnow(), _DEFAULTS)
        rule = credit_rule(customer.id)
        db.session.rollback()
    assert rule.limit_units == int(3 * CALL_COST * 10**6)
    assert counters.spent_units(rule, rule.period_at(utcnow())) == int(CALL_COST * 10**6)
    statuses = [metered_call(warm, "key-rebuilt").status_code for _ in range(4)]
    assert statuses[:2] == [200, 200] and 402 in statuses


def _paid_checkout(client: FlaskClient, stripe_server: FakeStripe, key: str, amount: str) -> dict:
    resp = client.post(
        "/v1/billing/credits/checkout",
        json={
            "amount": amount,
            "success_url": "https://app.example.com/done",
            "cancel_url": "https://app.example.com/cancel",
        },
        headers=auth(key),
    )
    assert resp.status_code == 200, resp.get_json()
    assert resp.get_json()["url"].startswith("https://checkout.stripe.test/")
    return stripe_server.pay_checkout(resp.get_json()["id"])


def test_credit_bought_through_checkout_is_granted_once_and_only_when_paid(
    app: Flask, client: FlaskClient, stripe_server: FakeStripe, make_customer
) -> None:
    """The session grants nothing; ``checkout.session.completed`` paid grants once,
    however often it is delivered, and keeps the card for recharges."""
    customer = make_customer("key-buyer", stripe_customer_id=stripe_server.add_customer())
    _prepaid(client, customer.id)
    session = _paid_checkout(client, stripe_server, "key-buyer", "25.00")
    assert Decimal(_credits(client, "key-buyer")["balance"]) == 0  # not before the webhook
    first = stripe_event(client, "checkout.session.completed", session, "evt_paid")
    again = stripe_event(client, "checkout.session.completed", session, "evt_paid")
    other = stripe_event(client, "checkout.session.async_payment_succeeded", session)
    assert [r.get_json()["status"] for r in (first, again, other)] == [
        "processed",
        "duplicate",
        "processed",
    ]
    answer = _credits(client, "key-buyer")
    assert Decimal(answer["balance"]) == 25 and len(answer["grants"]) == 1
    assert answer["grants"][0]["source"] == f"checkout:{session['id']}"
    assert answer["auto_recharge"]["card_saved"] is True
    unpaid = {**session, "id": "cs_unpaid", "payment_status": "unpaid"}
    stripe_event(client, "checkout.session.completed", unpaid)
    assert Decimal(_credits(client, "key-buyer")["balance"]) == 25


def test_auto_recharge_charges_once_per_crossing_and_credits_on_success_only(
    app: Flask, client: FlaskClient, stripe_server: FakeStripe, make_customer, celery_worker
) -> None:
    """Below the threshold, one recharge: a PaymentIntent off-session with the crossing's
    idempotency key; credited on ``payment_intent.succeeded`` (replayed: once), and a
    failure reported after the success changes nothing."""
    from tasks.ingest import record_events_task

    customer = make_customer("key-recharging", stripe_customer_id=stripe_server.add_customer())
    _prepaid(client, customer.id)
    session = _paid_checkout(client, stripe_server, "key-recharging", "0.05")
    stripe_event(client, "checkout.session.completed", session)
    resp = client.put(
        "/v1/billing/credits/auto-recharge",
        json={"threshold": "0.03", "amount": "10.00"},
        headers=auth("key-recharging"),
    )
    assert resp.status_code == 200, resp.get_json()
    batch = [event("key-recharging") for _ in range(5)]  # 0.0225 spent: 0.0275 left
    record_events_task.apply(args=[batch], kwargs={"batch_id": "recharge-1"}).get()
    intents = wait_for(
        lambda: [
            i for i in stripe_server.state.payment_intents.values() if i["metadata"].get("recharge")
        ]
    )
    assert (
        len(intents) == 1 and intents[0]["amount"] == 1000 and intents[0]["status"] == "succeeded"
    )
    record_events_task.apply(
        args=[[event("key-recharging")]], kwargs={"batch_id": "recharge-2"}
    ).get()
    assert (
        len(
            [
                i
                for i in stripe_server.state.payment_intents.values()
                if i["metadata"].get("recharge")
            ]
        )
        == 1
    )
    assert (
        Decimal(_credits(client, "key-recharging")["balance"]) == Decimal("0.05") - 6 * EVENT_COST
    )
    for event_id in ("evt_pi_ok", "evt_pi_ok"):
        stripe_event(client, "payment_intent.succeeded", intents[0], event_id)
    stripe_event(
        client,
        "payment_intent.payment_failed",
        {**intents[0], "last_payment_error": {"message": "late"}},
    )
    answer = _credits(client, "key-recharging")
    assert Decimal(answer["balance"]) == Decimal("10.05") - 6 * EVENT_COST
    with app.app_context():
        recharge = db.session.scalar(select(CreditRecharge))
        assert (
            recharge.status == "succeeded"
            and recharge.idempotency_key == f"recharge-{customer.id}-1"
        )
        db.session.rollback()


def test_declined_recharges_are_recorded_and_pause_after_three(
    app: Flask, client: FlaskClient, stripe_server: FakeStripe, make_customer
) -> None:
    from app.credits.purchases import charge, recharge_due

    customer = make_customer("key-declined", stripe_customer_id=stripe_server.add_customer())
    with app.app_context():
        account = open_account(customer.id, utcnow(), AGE)
        account.payment_method = "pm_card_declined"
        account.recharge_threshold, account.recharge_amount = Decimal(5), Decimal(20)
        db.session.commit()
    stripe_server.state.declined_methods.add("pm_card_declined")
    now = utcnow()
    for n in range(3):
        with app.app_context():
            account = db.session.get(CreditAccount, customer.id)
            due = recharge_due(account, now + timedelta(hours=2 * n))
            assert due is not None, n
            intent = charge(due, services(app).stripe)
            db.session.commit()
            obj = stripe_server.state.payment_intents[intent]
        stripe_event(client, "payment_intent.payment_failed", obj)
    with app.app_context():
        account = db.session.get(CreditAccount, customer.id)
        statuses = db.session.scalars(select(CreditRecharge.status)).all()
        assert statuses == ["failed"] * 3 and account.recharge_paused
        assert recharge_due(account, now + timedelta(hours=8)) is None
        db.session.rollback()
    stripe_event(client, "payment_intent.payment_failed", obj)  # the last one, replayed
    told = _notices(app, customer.id)
    assert [n["type"] for n in told] == ["credits.recharge_failed"] * 3
    assert {n["error"] for n in told} == {"Your card was declined."}
    assert Decimal(_credits(client, "key-declined")["balance"]) == 0


def _recorded(batch: list[dict]) -> None:
    """A batch recorded by the worker's task, burn and notices included."""
    from tasks.ingest import record_events_task

    record_events_task.apply(args=[batch]).get()


def _notices(app: Flask, customer_id: int) -> list[dict]:
    with app.app_context():
        rows = db.session.scalars(
            select(BudgetAlert)
            .where(BudgetAlert.customer_id == customer_id, BudgetAlert.budget_id.is_(None))
            .order_by(BudgetAlert.id)
        ).all()
        db.session.rollback()
        return [row.payload for row in rows]


def test_low_balance_and_expiring_credit_are_told_once_per_crossing(
    app: Flask,
    client: FlaskClient,
    celery_worker,
    make_customer,
    receiver: Receiver,
    settings: Settings,
) -> None:
    """Low balance at $0.01: a burn that crosses it is told once, however many batches
    (one delivered twice) follow below it; a top-up back above re-arms it, and the
    next crossing is told again. A grant expiring within the warning days is told
    once by the minute's job, run twice. Each is a signed webhook, like budget alerts."""
    from tasks.credits import settle_credits

    customer = make_customer("key-low")
    secret = subscribe(client, "key-low", receiver.url)
    _prepaid(client, customer.id)
    resp = client.put(
        f"/v1/billing/customers/{customer.id}/credits",
        json={"overage": "bill", "low_balance_at": "0.01"},
        headers=auth(ADMIN_TOKEN),
    )
    assert resp.status_code == 200, resp.get_json()
    _grant(client, customer.id, amount="0.012")
    first, second = event("key-low"), event("key-low")
    for batch in ([first], [second], [second]):  # 0.0075, then 0.003 (the second twice)
        _recorded(batch)
    wait_for(lambda: _burnt(app, customer.id) == 2 * EVENT_COST)
    assert [n["type"] for n in _notices(app, customer.id)] == ["credits.low_balance"]
    _grant(client, customer.id, amount="0.02")  # 0.023: above again
    for _ in range(3):  # 0.0185, 0.014, 0.0095
        _recorded([event("key-low")])
    wait_for(lambda: _burnt(app, customer.id) == 5 * EVENT_COST)
    soon = (utcnow() + timedelta(days=3)).isoformat()
    _grant(client, customer.id, amount="0.5", expires_at=soon)
    with app.app_context():
        settle_credits.apply()
        settle_credits.apply()
    notices = _notices(app, customer.id)
    assert [n["type"] for n in notices] == [
        "credits.low_balance",
        "credits.low_balance",
        "credits.expiring",
    ]
    assert [n["amount"] for n in notices] == ["0.0075", "0.0095", "0.5"]
    wait_for(lambda: len(receiver.requests) == 3, timeout=30)
    for request in receiver.requests:
        assert Webhook(secret).verify(request["body"], request["headers"])["customer_id"] == (
            customer.id
        )
    listed = client.get("/v1/billing/alerts", headers=auth("key-low")).get_json()
    assert sorted(a["type"] for a in listed["alerts"]) == sorted(n["type"] for n in notices)


def test_the_report_bills_only_what_credits_did_not_cover(
    app: Flask, client: FlaskClient, stripe_server: FakeStripe, make_customer, settings: Settings
) -> None:
    """A prepaid customer (overage billed) owes Stripe only the uncovered usage; a
    postpaid one all of it. Run twice, each day is billed once."""
    onboarded = utcnow() - timedelta(days=40)  # yesterday is in their billing periods
    prepaid = make_customer(
        "key-covered", stripe_customer_id=stripe_server.add_customer(), created_at=onboarded
    )
    postpaid = make_customer(
        "key-postpaid", stripe_customer_id=stripe_server.add_customer(), created_at=onboarded
    )
    yesterday = utcnow() - timedelta(days=1)
    _prepaid(client, prepaid.id)
    with app.app_context():
        add_grant(prepaid.id, 3 * EVENT_COST, "purchased", "test:covered", utcnow(), AGE,
                  effective_at=onboarded)  # fmt: skip
        db.session.commit()
        record(
            [
                event(k, timestamp=yesterday.isoformat())
                for k in ["key-covered"] * 5 + ["key-postpaid"] * 5
            ]
        )
        burn_committed(prepaid.id, yesterday, AGE)  # as the worker burns on recording
        cost = settings.replace(billing_quantity="cost", billing_cost_unit=Decimal("0.0001"))
        for _ in range(2):
            run_report(cost, yesterday.date())
    sent = {}
    for e in stripe_server.state.meter_events:
        customer = e["payload"]["stripe_customer_id"]
        sent[customer] = sent.get(customer, 0) + int(e["payload"]["value"])
    assert sent == {
        prepaid.stripe_customer_id: int(2 * EVENT_COST / Decimal("0.0001")),
        postpaid.stripe_customer_id: int(5 * EVENT_COST / Decimal("0.0001")),
    }


def test_a_customer_without_credits_reads_404_and_admins_manage_grants(
    client: FlaskClient, make_customer, app: Flask
) -> None:
    customer = make_customer("key-postpaid-only")
    missing = client.get("/v1/billing/credits", headers=auth("key-postpaid-only"))
    assert missing.status_code == 404 and missing.get_json()["error"]["field"] == "customer_id"
    grant = _grant(client, customer.id, amount="5", category="purchased")
    refund = client.post(
        f"/v1/billing/credits/grants/{grant['id']}/refund",
        json={"amount": "2"},
        headers=auth(ADMIN_TOKEN),
    )
    assert refund.status_code == 200 and Decimal(refund.get_json()["remaining"]) == 3
    void = client.post(f"/v1/billing/credits/grants/{grant['id']}/void", headers=auth(ADMIN_TOKEN))
    assert void.status_code == 200 and Decimal(void.get_json()["remaining"]) == 0
    again = client.post(f"/v1/billing/credits/grants/{grant['id']}/void", headers=auth(ADMIN_TOKEN))
    assert again.status_code == 409
    adjusted = client.post(
        f"/v1/billing/customers/{customer.id}/credits/adjustments",
        json={"amount": "1.5", "note": "goodwill"},
        headers=auth(ADMIN_TOKEN),
    )
    assert adjusted.status_code == 201
    answer = _credits(client, "key-postpaid-only")
    assert Decimal(answer["balance"]) == Decimal("1.5") == _ledger_sum(app, customer.id)
    assert [e["kind"] for e in answer["entries"]] == ["adjustment", "void", "refund", "grant"]


def test_the_cli_grants_voids_refunds_and_lists_as_the_api_does(
    app: Flask, client: FlaskClient, make_customer
) -> None:
    """``flask billing credits …``: what it changes is what the API then answers, and
    what the API would refuse it refuses, naming the field."""
    customer = make_customer("key-cli")
    runner = app.test_cli_runner()

    def run(*args: str) -> list[dict]:
        result = runner.invoke(args=["billing", "credits", *args])
        assert result.exit_code == 0, result.output
        return [json.loads(line) for line in result.output.splitlines()]

    [paid] = run(
        "grant", "--customer", str(customer.id), "--amount", "20", "--category", "purchased"
    )
    [promo] = run(
        "grant",
        "--customer",
        str(customer.id),
        "--amount",
        "5",
        "--expires",
        "2099-01-01T00:00:00Z",
    )
    assert promo["expires_at"] == "2099-01-01T00:00:00+00:00"
    [refunded] = run("refund", "--grant", str(paid["id"]), "--amount", "7.5")
    assert refunded["remaining"] == "12.5"
    [voided] = run("void", "--grant", str(promo["id"]))
    assert voided["remaining"] == "0" and voided["closed_at"]
    listed = run("list", "--customer", str(customer.id))
    assert Decimal(listed[0]["balance"]) == Decimal(_credits(client, "key-cli")["balance"])
    assert listed[0]["balance"] == "12.5"
    assert [g["id"] for g in listed[1:]] == [paid["id"], promo["id"]]
    for args, field in (
        (("refund", "--grant", str(promo["id"]), "--amount", "1"), "grant_id"),
        (("refund", "--grant", str(paid["id"]), "--amount", "13"), "amount"),
        (("grant", "--customer", "999999", "--amount", "1"), "customer_id"),
        (("void", "--grant", "999999"), "grant_id"),
    ):
        result = runner.invoke(args=["billing", "credits", *args])
        assert result.exit_code == 1 and f"{field}:" in result.output, result.output
    result = runner.invoke(
        args=["billing", "credits", "grant", "--customer", "1", "--amount", "lots"]
    )
    assert result.exit_code == 2 and "an amount in USD" in result.output


def test_a_credit_movement_past_what_the_ledger_holds_is_a_400_naming_its_field(
    client: FlaskClient, make_customer
) -> None:
    """Schemathesis found it: a 12-digit adjustment overflowed SQLite's 64-bit count of
    10^-12 USD (a 500). One movement is at most 1,000,000 USD, on every backend."""
    customer = make_customer("key-huge-credit")
    path = f"/v1/billing/customers/{customer.id}/credits"
    admin = auth(ADMIN_TOKEN)
    assert client.put(path, json={"overage": "block"}, headers=admin).status_code == 200
    for url, body in (
        (f"{path}/grants", {"amount": "999999999999"}),
        (f"{path}/adjustments", {"amount": "-999999999999", "note": "typo"}),
        (f"{path}/adjustments", {"amount": "1000000.000000000001", "note": "typo"}),
    ):
        resp = client.post(url, json=body, headers=admin)
        assert resp.status_code == 400, (url, body, resp.get_json())
        assert resp.get_json()["error"]["field"] == "amount"
    assert (
        client.post(f"{path}/grants", json={"amount": "1000000"}, headers=admin).status_code == 201
    )
