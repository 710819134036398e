"""Budgets enforced at admission, in Redis: concurrent calls never pass a hard limit on a
stale figure, counters follow PostgreSQL, periods roll over at UTC midnight and month's
end, and Redis being away is answered by the setting, both ways."""

from __future__ import annotations

import http.client
import logging
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient
from prometheus_client import REGISTRY
from sqlalchemy import func, select

from app.budgets.counters import LOADED, Counters, KeyRecord, Rule
from app.budgets.models import Budget
from app.budgets.spend import Estimates, rebuild, rule_of, settle_batch
from app.columns import utcnow
from app.config import Settings
from app.customers.models import BillingCustomer
from app.extensions import db
from app.ingest.models import UsageEvent
from app.periods import Period, period_at
from app.registry import services
from app.security import hash_api_key
from tests.factories import event
from tests.helpers import (
    ADMIN_TOKEN,
    at_once,
    auth,
    close_enforcing,
    enforcing_app,
    issue_key,
    measured,
    metered_call,
    record,
    scrape,
    wait_for,
)
from tests.processes import free_port

pytestmark = pytest.mark.services
CALL_TOKENS = 1500  # what the stand-in /v1/execute answers: 1,000 in, 500 out
_DEFAULTS = Estimates.from_settings(Settings())


@pytest.fixture(params=[Settings().budget_lease_seconds, 0], ids=["leases", "no-leases"])
def enforcing(
    app: Flask, settings: Settings, tmp_path: Path, celery_worker, request
) -> Iterator[Flask]:
    """An API process enforcing budgets: with its admission leases (the default), and
    with every call asking Redis (``BUDGET_LEASE_SECONDS=0``)."""
    extra = enforcing_app(app, settings, tmp_path / "spool", budget_lease_seconds=request.param)
    with app.app_context():
        rebuild(
            services(app).budget_counters, utcnow(), _DEFAULTS
        )  # the state a running deployment has
    yield extra
    # Every call the test made is recorded before the next test empties the tables.
    close_enforcing(extra)


def _budget(client: FlaskClient, customer_id: int, **fields: object) -> dict:
    body = {"metric": "tokens", "period": "day", "thresholds": [], "hard_limit": True, **fields}
    resp = client.post(
        f"/v1/billing/customers/{customer_id}/budgets", json=body, headers=auth(ADMIN_TOKEN)
    )
    assert resp.status_code == 201, resp.get_json()
    return resp.get_json()


def _rule(app: Flask, budget_id: int) -> tuple[Rule, Period]:
    with app.app_context():
        budget = db.session.get(Budget, budget_id)
        customer = db.session.get(BillingCustomer, budget.customer_id)
        rule = rule_of(budget, customer.created_at.day)
        period = rule.period_at(utcnow())
        db.session.rollback()
        return rule, period


def _reservations(app: Flask, budget_id: int) -> dict[str, int]:
    """The budget's reservations this period: call id -> amount, and their ``_sum``."""
    rule, period = _rule(app, budget_id)
    held = services(app).budget_counters.redis.hgetall(rule.keys(period)[2])
    return {k.decode(): int(v) for k, v in held.items()}


def _admissions(how: str) -> float:
    return REGISTRY.get_sample_value("ub_budget_admissions_total", {"how": how}) or 0.0


def _refusals(reason: str) -> float:
    return REGISTRY.get_sample_value("ub_budget_refusals_total", {"reason": reason}) or 0.0


def _stored_tokens(app: Flask, key: str) -> int:
    with app.app_context():
        total = db.session.scalar(
            select(func.coalesce(func.sum(UsageEvent.tokens_total), 0)).where(
                UsageEvent.api_key_hash == hash_api_key(key)
            )
        )
        db.session.rollback()
        return int(total)


def _settled(app: Flask, enforcing: Flask, budget_id: int, key: str, calls: int) -> None:
    """Wait until the worker has recorded ``calls`` calls and mirrored them in Redis."""
    services(enforcing).outbox.flush()
    counters = services(app).budget_counters
    rule, period = _rule(app, budget_id)
    wait_for(lambda: _stored_tokens(app, key) == calls * CALL_TOKENS)
    wait_for(lambda: counters.spent_units(rule, period) == calls * CALL_TOKENS)


def test_concurrent_calls_never_pass_a_hard_limit_on_a_stale_figure(
    app: Flask, client: FlaskClient, enforcing: Flask, make_customer
) -> None:
    """A limit that fits 10 calls, 2 of them spent: of 64 calls at once, exactly the 8
    that fit are served; the other 56 get 402 and are never billed. The overshoot
    bound (README) is the calls admitted beyond their reservation: zero here, where
    every call costs what the period's mean says."""
    customer = make_customer("key-budgeted")
    budget = _budget(client, customer.id, limit=str(10 * CALL_TOKENS))
    warm = enforcing.test_client()
    for n in (1, 2):  # the period's first call reserves the default, then the mean
        assert metered_call(warm, "key-budgeted").status_code == 200
        _settled(app, enforcing, budget["id"], "key-budgeted", n)

    statuses = [a.status_code for a in at_once(enforcing, "key-budgeted")]
    assert sorted(set(statuses)) == [200, 402]
    served = statuses.count(200)
    _settled(app, enforcing, budget["id"], "key-budgeted", 2 + served)
    spent = _stored_tokens(app, "key-budgeted")
    measured(
        f"budget admission, 64 concurrent calls: served={served} refused={statuses.count(402)} "
        f"spent={spent} limit={10 * CALL_TOKENS} overshoot={max(0, spent - 10 * CALL_TOKENS)}"
    )
    assert served == 8 and spent == 10 * CALL_TOKENS
    wait_for(lambda: _reservations(app, budget["id"]) == {"_sum": 0})  # every call settled
    refused = metered_call(warm, "key-budgeted")
    error = refused.get_json()["error"]
    assert refused.status_code == 402 and error["code"] == "budget_exceeded"
    assert error["limit"] == str(10 * CALL_TOKENS) and error["metric"] == "tokens"
    period_end = datetime.fromisoformat(error["period_end"])
    assert period_end == period_at("day", utcnow()).ends_at
    assert 0 < int(refused.headers["Retry-After"]) <= 86400


def test_a_soft_budget_never_refuses_and_an_unbudgeted_key_is_served(
    app: Flask, client: FlaskClient, enforcing: Flask, make_customer
) -> None:
    soft = make_customer("key-soft")
    make_customer("key-free")
    budget = _budget(client, soft.id, limit=str(CALL_TOKENS), hard_limit=False)
    caller = enforcing.test_client()
    assert metered_call(caller, "key-soft").status_code == 200
    _settled(app, enforcing, budget["id"], "key-soft", 1)
    statuses = [
        metered_call(caller, key).status_code for key in ("key-soft", "key-free", "key-none")
    ]
    assert statuses == [200, 200, 401]  # a key no customer holds is no one's to bill


def test_a_revoked_key_is_refused_before_the_view_runs(
    app: Flask, client: FlaskClient, enforcing: Flask, make_customer
) -> None:
    """Revoked through this process: refused on the next call, lease or none."""
    customer = make_customer("key-kept")
    caller = enforcing.test_client()
    issued = issue_key(caller, customer.id, "l")
    assert [metered_call(caller, issued["key"]).status_code for _ in range(3)] == [200] * 3
    caller.post(f"/v1/billing/keys/{issued['id']}/revoke", headers=auth(ADMIN_TOKEN))
    refused = metered_call(caller, issued["key"])
    assert refused.status_code == 401 and refused.get_json()["error"]["field"] == "Authorization"
    assert metered_call(caller, "key-kept").status_code == 200
    # Without enforcement the metered API is not ours to gate: the call is served.
    assert metered_call(client, issued["key"]).status_code == 200


def test_a_customers_own_lower_limit_applies_and_never_exceeds_the_admins(
    app: Flask, client: FlaskClient, enforcing: Flask, make_customer, caplog
) -> None:
    customer = make_customer("key-careful")
    limits_reached = REGISTRY.get_sample_value("ub_budget_limits_reached_total") or 0
    budget = _budget(client, customer.id, limit=str(10 * CALL_TOKENS))
    path = f"/v1/billing/budgets/{budget['id']}/customer-limit"
    above = client.put(path, json={"limit": str(11 * CALL_TOKENS)}, headers=auth("key-careful"))
    assert above.status_code == 400 and above.get_json()["error"]["field"] == "limit"
    other = make_customer("key-other")
    assert client.put(path, json={"limit": "1"}, headers=auth("key-other")).status_code == 404
    assert other.id != customer.id
    lower = client.put(path, json={"limit": str(CALL_TOKENS)}, headers=auth("key-careful"))
    assert lower.status_code == 200 and lower.get_json()["effective_limit"] == str(CALL_TOKENS)
    caller = enforcing.test_client()
    assert metered_call(caller, "key-careful").status_code == 200
    caplog.set_level(logging.ERROR, logger="usage_billing.budgets")
    _settled(app, enforcing, budget["id"], "key-careful", 1)
    refusals = _refusals("budget_exceeded")
    assert metered_call(caller, "key-careful").status_code == 402
    assert _refusals("budget_exceeded") == refusals + 1
    # Operators hear of a hard limit reached, once a period however often it is settled.
    with app.app_context():
        settle_batch(services(app).budget_counters, [event("key-careful")], utcnow(), _DEFAULTS)
    reached = [r for r in caplog.records if r.getMessage() == "hard budget limit reached"]
    assert len(reached) == 1 and reached[0].customer_id == customer.id
    assert REGISTRY.get_sample_value("ub_budget_limits_reached_total") == limits_reached + 1
    own = client.get("/v1/billing/budgets", headers=auth("key-careful")).get_json()["budgets"]
    assert [(b["spent"], b["used_percent"]) for b in own] == [(str(CALL_TOKENS), "100.00")]


def test_a_budget_per_key_leaves_the_customers_other_keys_alone(
    app: Flask, client: FlaskClient, enforcing: Flask, make_customer
) -> None:
    customer = make_customer("key-main")
    intern = issue_key(client, customer.id, "i")
    budget = _budget(client, customer.id, limit=str(CALL_TOKENS), api_key_id=intern["id"])
    caller = enforcing.test_client()
    assert metered_call(caller, intern["key"]).status_code == 200
    _settled(app, enforcing, budget["id"], intern["key"], 1)
    # The first call of a period reserved nothing (no mean yet) and was released.
    wait_for(lambda: _reservations(app, budget["id"]) == {"_sum": 0})
    assert metered_call(caller, intern["key"]).status_code == 402
    assert metered_call(caller, "key-main").status_code == 200


def test_periods_roll_over_at_utc_midnight_and_at_the_months_end(app: Flask) -> None:
    """Against the real Redis and the admission script: the spend of one period does
    not count in the next, for days, months and billing periods (anchored on the 31st)."""
    counters = services(app).budget_counters
    counters.mark_loaded()
    cases = [
        ("day", datetime(2026, 11, 28, 23, 59, 59, tzinfo=UTC), timedelta(seconds=1), 1),
        ("month", datetime(2026, 11, 30, 23, 59, 59, tzinfo=UTC), timedelta(seconds=1), 1),
        ("billing_period", datetime(2027, 2, 27, 23, 59, 59, tzinfo=UTC), timedelta(seconds=1), 31),
    ]
    for n, (kind, before, step, anchor) in enumerate(cases):
        rule = Rule(9000 + n, "tokens", kind, 100, True, anchor)
        key_hash = hash_api_key(f"rollover-{n}")
        counters.publish({key_hash: KeyRecord(1, False, (rule,))})
        counters.settle(rule, rule.period_at(before), Decimal(100), 1, (), before)
        assert counters.admit(key_hash, uuid.uuid4().hex, before).verdict == "refused"
        after = before + step
        assert rule.period_at(after).start == after.date()
        assert counters.admit(key_hash, uuid.uuid4().hex, after).verdict == "admitted"


def test_period_bounds() -> None:
    at = datetime(2026, 3, 15, 12, tzinfo=UTC)
    assert period_at("day", at) == Period(at.date(), at.date() + timedelta(days=1))
    assert period_at("month", at).start.isoformat() == "2026-03-01"
    assert period_at("month", at).end.isoformat() == "2026-04-01"
    assert period_at("month", datetime(2026, 12, 31, tzinfo=UTC)).end.isoformat() == "2027-01-01"
    # A billing anchor on the 31st: February's period starts on its last day.
    feb = period_at("billing_period", datetime(2027, 3, 10, tzinfo=UTC), anchor_day=31)
    assert (feb.start.isoformat(), feb.end.isoformat()) == ("2027-02-28", "2027-03-31")
    jan = period_at("billing_period", datetime(2027, 2, 1, tzinfo=UTC), anchor_day=31)
    assert (jan.start.isoformat(), jan.end.isoformat()) == ("2027-01-31", "2027-02-28")
    mid = period_at("billing_period", datetime(2026, 11, 28, tzinfo=UTC), anchor_day=15)
    assert (mid.start.isoformat(), mid.end.isoformat()) == ("2026-11-15", "2026-12-15")


@pytest.mark.parametrize(("policy", "status"), [("open", 200), ("closed", 503)])
def test_redis_down_is_answered_by_the_setting(
    app: Flask, settings: Settings, tmp_path: Path, make_customer, policy: str, status: int
) -> None:
    """Redis unreachable: "open" (the default) serves the call, which stays in the
    spool until the broker is back; "closed" refuses it with 503 and Retry-After.
    Either way the call is counted for the operators' alert."""
    make_customer("key-during-outage")
    dead = enforcing_app(
        app,
        settings,
        tmp_path / "spool",
        redis_url=f"redis://127.0.0.1:{free_port()}/0",
        budget_redis_down=policy,
    )
    unchecked, refused = _admissions("unchecked"), _refusals("unavailable")
    try:
        resp = metered_call(dead.test_client(), "key-during-outage")
        assert resp.status_code == status
        if status == 503:
            assert resp.headers["Retry-After"] and resp.get_json()["error"]["code"] == "unavailable"
        counted = (_admissions("unchecked") - unchecked, _refusals("unavailable") - refused)
        assert counted == ((1, 0) if status == 200 else (0, 1))
    finally:
        close_enforcing(dead, drain=False)


def test_redis_that_lost_its_state_while_a_customer_is_at_its_limit_refuses_it_at_once(
    app: Flask, client: FlaskClient, enforcing: Flask, make_customer
) -> None:
    """Redis restarted empty with a customer at its hard limit: the next call is not
    served unchecked (it was: 18 served, 30 recorded against 10). The key's record
    and its budget's spend are read from PostgreSQL before the call is decided, and
    a rebuild of everything is queued."""
    # One key per variant: nothing the other left behind can be attributed to it.
    key = f"key-lost-{enforcing.config['SETTINGS'].budget_lease_seconds}"
    customer = make_customer(key)
    budget = _budget(client, customer.id, limit=str(2 * CALL_TOKENS))
    caller = enforcing.test_client()
    for n in (1, 2):
        assert metered_call(caller, key).status_code == 200
        _settled(app, enforcing, budget["id"], key, n)
    counters: Counters = services(app).budget_counters
    for name in counters.redis.scan_iter("ub:budget:*"):
        counters.redis.delete(name)
    statuses = [metered_call(caller, key).status_code for _ in range(20)]
    assert statuses == [402] * 20
    wait_for(lambda: counters.redis.exists(LOADED), timeout=30)  # and everyone rebuilt
    assert _stored_tokens(app, key) == 2 * CALL_TOKENS


def test_a_budget_set_or_lowered_in_a_period_with_usage_holds_at_once(
    app: Flask, client: FlaskClient, enforcing: Flask, make_customer
) -> None:
    """A budget created when the period already has usage, or lowered below what is
    spent, is decided on that spend from its first call (it had no state in Redis
    until the next batch was recorded: 61 of 64 served against a limit fitting 10)."""
    customer = make_customer("key-late")
    caller = enforcing.test_client()
    for _ in range(3):
        assert metered_call(caller, "key-late").status_code == 200
    services(enforcing).outbox.flush()
    wait_for(lambda: _stored_tokens(app, "key-late") == 3 * CALL_TOKENS)
    budget = _budget(client, customer.id, limit=str(4 * CALL_TOKENS))  # fits one more
    statuses = [a.status_code for a in at_once(enforcing, "key-late")]
    assert statuses.count(200) == 1, statuses
    services(enforcing).outbox.flush()
    wait_for(lambda: _stored_tokens(app, "key-late") == 4 * CALL_TOKENS)
    resp = client.put(
        f"/v1/billing/budgets/{budget['id']}",
        json={"limit": str(2 * CALL_TOKENS)},  # below the spend: only the limit changes
        headers=auth(ADMIN_TOKEN),
    )
    assert resp.status_code == 200
    assert (resp.get_json()["hard_limit"], resp.get_json()["thresholds"]) == (True, [])
    assert [metered_call(caller, "key-late").status_code for _ in range(5)] == [402] * 5
    assert _stored_tokens(app, "key-late") == 4 * CALL_TOKENS


@pytest.mark.parametrize("history", [True, False], ids=["with-history", "first-ever"])
def test_a_periods_first_calls_are_bounded_by_their_estimate(
    app: Flask, client: FlaskClient, enforcing: Flask, make_customer, history: bool
) -> None:
    """No call recorded in the period yet: each admitted call reserves the mean cost of
    the key's calls of the last 30 days, or (never any usage) the default estimate, at
    most the limit. 64 calls at once against a limit fitting 10 serve exactly 10 with
    history; without, the first, then the rest once it is recorded: 10 in all (it was
    64 of 64)."""
    key = f"key-cold-{history}"
    customer = make_customer(key)
    if history:  # five calls yesterday, by another key of the customer
        yesterday = (utcnow() - timedelta(days=1)).isoformat()
        other = issue_key(client, customer.id, "earlier")["key"]
        with app.app_context():
            record([event(other, timestamp=yesterday, tokens_output=500) for _ in range(5)])
    budget = _budget(client, customer.id, limit=str(10 * CALL_TOKENS))
    served = [a.status_code for a in at_once(enforcing, key)].count(200)
    # Without history the first call reserves the whole limit; the rest of the burst is
    # served only once it is recorded (its mean then the estimate), if that is in time.
    assert served == 10 if history else 1 <= served <= 10
    caller = enforcing.test_client()
    while True:  # one at a time, each recorded before the next
        _settled(app, enforcing, budget["id"], key, served)
        if metered_call(caller, key).status_code != 200:
            break
        served += 1
    measured(
        f"budget admission, a cold period ({'with' if history else 'no'} history): served={served} limit=10 calls"
    )
    assert served == 10 and _stored_tokens(app, key) == 10 * CALL_TOKENS


def test_a_key_revoked_in_another_process_ends_this_ones_lease(
    app: Flask, client: FlaskClient, settings: Settings, tmp_path: Path, make_customer
) -> None:
    """A lease of an hour, so only the announcement can end it: the key is revoked
    through another process, and this one refuses it within moments."""
    customer = make_customer("key-elsewhere")
    hour = enforcing_app(app, settings, tmp_path / "spool", budget_lease_seconds=3600)
    try:
        caller = hour.test_client()
        issued = issue_key(client, customer.id, "l")
        assert [metered_call(caller, issued["key"]).status_code for _ in range(3)] == [200] * 3
        client.post(f"/v1/billing/keys/{issued['id']}/revoke", headers=auth(ADMIN_TOKEN))
        revoked_at = time.monotonic()
        served = 0
        while metered_call(caller, issued["key"]).status_code == 200:
            served += 1
            assert time.monotonic() - revoked_at < 10, "the lease outlived the revocation"
            time.sleep(0.01)
        measured(
            f"budget leases: key revoked in another process, refused here after "
            f"{(time.monotonic() - revoked_at) * 1000:.0f} ms ({served} calls served meanwhile)"
        )
    finally:
        close_enforcing(hour, drain=False)


def test_leases_admit_without_asking_never_overshoot_and_give_back_what_they_kept(
    app: Flask, client: FlaskClient, enforcing: Flask, make_customer
) -> None:
    """A limit that fits 100 calls, 2 spent: far from it, calls take leases (at most
    1/16 of what is left each); waves of 64 calls at once never pass the limit; once
    the leases end, what they held unused comes back, and exactly the 98 calls that
    fit are served in all. Every reservation is released at the end."""
    customer = make_customer("key-leased")
    budget = _budget(client, customer.id, limit=str(100 * CALL_TOKENS))
    before = {how: _admissions(how) for how in ("lease", "redis")}
    caller = enforcing.test_client()
    assert [metered_call(caller, "key-leased").status_code for _ in range(2)] == [200, 200]
    _settled(app, enforcing, budget["id"], "key-leased", 2)
    leased = enforcing.config["SETTINGS"].budget_lease_seconds > 0

    served = 0
    for _ in range(4):
        served += [a.status_code for a in at_once(enforcing, "key-leased")].count(200)
        assert served <= 98
        time.sleep(enforcing.config["SETTINGS"].budget_lease_seconds + 0.6)  # leases end
    _settled(app, enforcing, budget["id"], "key-leased", 2 + served)
    with app.app_context():
        calls = db.session.scalars(
            select(UsageEvent.metadata_).where(
                UsageEvent.api_key_hash == hash_api_key("key-leased")
            )
        ).all()
        db.session.rollback()
    on_leases = [c for m in calls if "." in (c := (m or {}).get("budget_call", ""))]
    measured(
        f"budget leases ({'on' if leased else 'off'}): 4 waves of 64 against 98 that fit: "
        f"served={served}, {len(on_leases)} of them admitted on a lease"
    )
    assert served == 98 and _stored_tokens(app, "key-leased") == 100 * CALL_TOKENS
    assert bool(on_leases) == leased
    decided = {how: _admissions(how) - n for how, n in before.items()}
    assert sum(decided.values()) == 2 + 4 * 64 and bool(decided["lease"]) == leased
    wait_for(lambda: _reservations(app, budget["id"]) == {"_sum": 0})


@pytest.mark.slow
def test_the_shipped_api_ends_every_workers_lease_when_a_key_is_revoked(
    stack, tmp_path: Path, make_customer
) -> None:
    """``make api`` (gunicorn, its default workers and threads) and ``make worker``,
    enforcing budgets, with leases of an hour so that only the announcement can end
    them: after many calls (leases in every gunicorn worker), the key is revoked from
    another process, and within moments every call of it is refused, on every worker."""
    from tests.processes import ShippedStack

    producer, _, local = stack
    admin = producer.test_client()
    customer = make_customer("key-shipped-lease")
    issued = issue_key(admin, customer.id, "leased")
    shipped = ShippedStack(
        local.database_url,
        local.redis_url,
        tmp_path,
        {
            "ENABLE_PRICING_MIDDLEWARE": "true",  # metering, and so admission, is opt-in
            "ENFORCE_BUDGETS": "true",  # enforcement is off by default
            "DEMO_EXECUTE_ENDPOINT": "true",  # a metered route to call
            "BUDGET_LEASE_SECONDS": "3600",  # only the announcement ends a lease
        },
    )
    try:
        shipped.start_worker()  # rebuilds the budgets' state the first call asks for
        shipped.start_api()

        def statuses(n: int) -> list[int]:
            conn = http.client.HTTPConnection("127.0.0.1", shipped.port, timeout=10)
            out = []
            for _ in range(n):
                conn.request(
                    "POST",
                    "/v1/execute",
                    body=b'{"prompt": "x"}',
                    headers={
                        "Authorization": f"Bearer {issued['key']}",
                        "Content-Type": "application/json",
                    },
                )
                response = conn.getresponse()
                response.read()
                out.append(response.status)
                conn.close()  # a new connection: any gunicorn worker may take the next
            return out

        # The key's record was published as it was issued: decided from the first call.
        assert set(statuses(40)) == {200}
        admissions = scrape(shipped.port)
        on_lease = sum(
            v
            for (name, labels), v in admissions.items()
            if name == "ub_budget_admissions_total" and ("how", "lease") in labels
        )
        assert on_lease > 0  # the calls were admitted on leases
        revoke = admin.post(f"/v1/billing/keys/{issued['id']}/revoke", headers=auth(ADMIN_TOKEN))
        assert revoke.status_code == 200
        revoked_at = time.monotonic()
        wait_for(lambda: set(statuses(20)) == {401}, timeout=10, interval=0)
        measured(
            f"budget leases under make api: {on_lease:.0f} calls on leases; revoked elsewhere, "
            f"every worker refuses within {(time.monotonic() - revoked_at) * 1000:.0f} ms"
        )
    finally:
        shipped.stop()


def test_a_key_in_use_gets_its_next_lease_ahead_and_its_calls_never_wait_for_redis(
    app: Flask, client: FlaskClient, enforcing: Flask, make_customer
) -> None:
    """Once the period has a mean cost, calls every 10 ms for 5 s, five times a
    lease's life: with leases, the first call asks Redis and every other is
    admitted on a lease taken ahead by the process's thread; without, every call
    asks Redis."""
    customer = make_customer("key-steady")
    budget = _budget(client, customer.id, limit=str(10**6 * CALL_TOKENS))
    caller = enforcing.test_client()
    assert metered_call(caller, "key-steady").status_code == 200  # the period's mean cost, known
    _settled(app, enforcing, budget["id"], "key-steady", 1)
    before = {how: _admissions(how) for how in ("lease", "redis")}
    deadline = time.monotonic() + 5
    calls = 0
    while time.monotonic() < deadline:
        assert metered_call(caller, "key-steady").status_code == 200
        calls += 1
        time.sleep(0.01)
    decided = {how: _admissions(how) - n for how, n in before.items()}
    measured(f"budget leases renewed ahead: {calls} calls over 5 s, admitted {decided}")
    if enforcing.config["SETTINGS"].budget_lease_seconds > 0:
        assert decided["redis"] <= 2 and decided["lease"] >= calls - 2
    else:
        assert decided == {"lease": 0, "redis": calls}


def test_without_enforcement_an_unknown_keys_calls_are_served_and_shown_to_operators(
    app: Flask, client: FlaskClient, celery_worker
) -> None:
    """Enforcement off (the default): a call of a key no customer holds is served and
    metered, as before, but counted (``ub_events_unattributed_total``) and listed on
    the operators' page, so no one's usage goes unnoticed."""
    from app.dashboard.overview import refresh_top_customers

    before = REGISTRY.get_sample_value("ub_events_unattributed_total") or 0
    assert metered_call(client, "key-nobody").status_code == 200
    services(app).outbox.flush()
    wait_for(lambda: _stored_tokens(app, "key-nobody") == CALL_TOKENS)
    wait_for(lambda: (REGISTRY.get_sample_value("ub_events_unattributed_total") or 0) == before + 1)
    with app.app_context():
        snapshot = refresh_top_customers(None, utcnow())
    assert snapshot["unattributed"] == [
        {
            "key_hash": hash_api_key("key-nobody")[:16],
            "events": 1,
            "last_day": utcnow().date().isoformat(),
        }
    ]


@pytest.mark.parametrize("doc", ["README.md", "docs/budgets.md"])
def test_the_documented_402_is_what_the_api_sends(
    app: Flask, client: FlaskClient, enforcing: Flask, make_customer, doc: str
) -> None:
    """The example's Retry-After is its period_end less its Date, as the API's is."""
    import re
    from email.utils import parsedate_to_datetime

    from tests.helpers import project_root

    text = (project_root() / doc).read_text()
    shown = text[text.index("HTTP/1.1 402 Payment Required") :][:600]
    when = parsedate_to_datetime(re.search(r"Date: (.+)", shown).group(1))
    wait = int(re.search(r"Retry-After: (\d+)", shown).group(1))
    end = datetime.fromisoformat(re.search(r'"period_end": "([^"]+)"', shown).group(1))
    assert wait == int((end - when).total_seconds())
    customer = make_customer("key-doc")
    _budget(client, customer.id, limit=str(CALL_TOKENS))
    caller = enforcing.test_client()
    assert metered_call(caller, "key-doc").status_code == 200
    services(enforcing).outbox.flush()
    wait_for(lambda: _stored_tokens(app, "key-doc") == CALL_TOKENS)
    refused = metered_call(caller, "key-doc")
    asked = utcnow()
    error = refused.get_json()["error"]
    assert refused.status_code == 402 and error["code"] == "budget_exceeded"
    expected = (datetime.fromisoformat(error["period_end"]) - asked).total_seconds()
    assert abs(int(refused.headers["Retry-After"]) - expected) <= 2
