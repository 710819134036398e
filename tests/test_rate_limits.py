"""Rate limits: requests and tokens per minute, per key and per customer, decided in
the one admission script beside budgets and credits, against real Redis, PostgreSQL
and a Celery worker."""

from __future__ import annotations

import math
import re
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from prometheus_client import REGISTRY
from sqlalchemy import select

from app.budgets.counters import PREFIX
from app.config import Settings
from app.customers.models import ApiKey
from app.extensions import db
from app.ratelimits.limits import BYTES_PER_TOKEN
from app.registry import services
from app.security import hash_api_key
from tests.helpers import (
    ADMIN_TOKEN,
    at_once,
    auth,
    close_enforcing,
    enforcing_app,
    issue_key,
    measured,
    metered_call,
    together,
    wait_for,
)

pytestmark = pytest.mark.services
CALL_TOKENS = 1500  # what the stand-in /v1/execute answers: 1,000 in, 500 out
_RESET = re.compile(r"^(\d+ms|\d+(\.\d+)?s|1m0s)$")


def _key_id(app: Flask, key: str) -> int:
    with app.app_context():
        key_id = db.session.scalar(select(ApiKey.id).where(ApiKey.key_hash == hash_api_key(key)))
        db.session.rollback()
        return int(key_id)


def _limit(client: FlaskClient, path: str, **limits: int | None) -> dict[str, Any]:
    resp = client.put(path, json=limits, headers=auth(ADMIN_TOKEN))
    assert resp.status_code == 200, resp.get_json()
    return resp.get_json()


def _fresh_minute(needed: float = 15) -> int:
    """Wait, if need be, so the next ``needed`` seconds fall in one UTC minute: the
    window a burst is counted in. The minute's number."""
    left = 60 - time.time() % 60
    if left < needed:
        time.sleep(left + 0.05)
    return int(time.time() // 60)


def _window_tokens(app: Flask, scope: str, minute: int) -> int:
    value = services(app).budget_counters.redis.get(f"{PREFIX}rl:{scope}:{minute}:t")
    return int(value or 0)


def test_a_burst_is_served_up_to_the_requests_per_minute(
    app: Flask, client: FlaskClient, enforcing: Flask, make_customer
) -> None:
    """64 calls at once against 10 requests per minute: 10 served, each with OpenAI's
    headers counting down, the rest 429 rate_limited with Retry-After to the minute's
    end. Nothing is held back for a key without limits."""
    make_customer("key-rpm")
    _limit(
        client, f"/v1/billing/keys/{_key_id(app, 'key-rpm')}/rate-limits", requests_per_minute=10
    )
    _fresh_minute()
    answers = at_once(enforcing, "key-rpm")
    served = [a for a in answers if a.status_code == 200]
    refused = [a for a in answers if a.status_code == 429]
    measured(f"rate limit, 64 calls at once against 10 rpm: served={len(served)}")
    assert len(served) == 10 and len(refused) == 54
    assert {a.headers["x-ratelimit-limit-requests"] for a in served} == {"10"}
    remaining = sorted(int(a.headers["x-ratelimit-remaining-requests"]) for a in served)
    assert remaining == list(range(10))
    assert all(_RESET.match(a.headers["x-ratelimit-reset-requests"]) for a in served)
    assert all("x-ratelimit-limit-tokens" not in a.headers for a in served)
    for answer in refused:
        assert answer.get_json()["error"]["code"] == "rate_limited"
        assert 1 <= int(answer.headers["Retry-After"]) <= 60
    make_customer("key-unlimited")
    free = metered_call(enforcing.test_client(), "key-unlimited")
    assert free.status_code == 200 and "x-ratelimit-limit-requests" not in free.headers


def test_tokens_per_minute_reserve_the_estimate_and_settle_on_the_recorded_event(
    app: Flask, client: FlaskClient, enforcing: Flask, make_customer
) -> None:
    """A call reserves its prompt (a token per 4 bytes) and its max_tokens; of 64 at
    once against 10,000 tokens per minute, as many as fit are served. The worker then
    moves the window to what the recorded events used (1,500 each), and the next call
    of the minute is refused on the truth."""
    make_customer("key-tpm")
    _limit(
        client, f"/v1/billing/keys/{_key_id(app, 'key-tpm')}/rate-limits", tokens_per_minute=10_000
    )
    body = {"prompt": "write a parser", "max_tokens": 400}
    estimate = math.ceil(len(enforcing.json.dumps(body).encode()) / BYTES_PER_TOKEN) + 400
    minute = _fresh_minute(25)
    answers = at_once(enforcing, "key-tpm", body=body)
    served = [a for a in answers if a.status_code == 200]
    fits = 10_000 // estimate
    measured(
        f"rate limit, 64 calls at once against 10,000 tpm reserving {estimate} each: "
        f"served={len(served)} (fits {fits})"
    )
    assert len(served) == fits
    assert {a.headers["x-ratelimit-limit-tokens"] for a in served} == {"10000"}
    lowest = min(int(a.headers["x-ratelimit-remaining-tokens"]) for a in served)
    assert lowest == 10_000 - fits * estimate
    refused = [a for a in answers if a.status_code == 429]
    assert len(refused) == 64 - fits
    scope = f"key:{_key_id(app, 'key-tpm')}"  # the window moves as the worker records
    services(enforcing).outbox.flush()
    wait_for(lambda: _window_tokens(app, scope, minute) == fits * CALL_TOKENS, timeout=30)
    assert metered_call(enforcing.test_client(), "key-tpm", body).status_code == 429


def test_a_customers_limit_holds_across_its_keys_and_the_tightest_is_reported(
    app: Flask, client: FlaskClient, enforcing: Flask, make_customer
) -> None:
    """6 requests per minute for the customer, 100 for one of its keys: two keys
    share the 6; the headers report the customer's, the tighter."""
    customer = make_customer("key-first")
    second = issue_key(client, customer.id)["key"]
    _limit(client, f"/v1/billing/customers/{customer.id}/rate-limits", requests_per_minute=6)
    _limit(
        client, f"/v1/billing/keys/{_key_id(app, 'key-first')}/rate-limits", requests_per_minute=100
    )
    _fresh_minute()
    answers = at_once(enforcing, "key-first", n=16) + at_once(enforcing, second, n=16)
    served = [a for a in answers if a.status_code == 200]
    assert len(served) == 6
    assert {a.headers["x-ratelimit-limit-requests"] for a in served} == {"6"}
    listed = client.get(
        f"/v1/billing/customers/{customer.id}/rate-limits", headers=auth(ADMIN_TOKEN)
    ).get_json()["limits"]
    assert {(lim["scope"], lim["requests_per_minute"]) for lim in listed} == {
        (f"customer:{customer.id}", 6),
        (f"key:{_key_id(app, 'key-first')}", 100),
    }
    own = client.get("/v1/billing/rate-limits", headers=auth(second)).get_json()["limits"]
    assert own == listed
    # Lifted: served at once, in every process (the change is announced).
    _limit(client, f"/v1/billing/customers/{customer.id}/rate-limits")
    assert metered_call(enforcing.test_client(), second).status_code == 200


def _window(app: Flask, scope: str, minute: int) -> tuple[int, int]:
    """A window's (requests, tokens) as Redis counts them."""
    r = services(app).budget_counters.redis
    base = f"{PREFIX}rl:{scope}:{minute}"
    return int(r.get(base + ":r") or 0), int(r.get(base + ":t") or 0)


def _on_lease() -> float:
    return REGISTRY.get_sample_value("ub_budget_admissions_total", {"how": "lease"}) or 0.0


def test_far_from_its_limits_a_key_is_admitted_on_leases_and_the_windows_stay_exact(
    app: Flask,
    client: FlaskClient,
    enforcing: Flask,
    settings: Settings,
    tmp_path: Path,
    make_customer,
) -> None:
    """1,000 requests and 1,500,000 tokens per minute; 1,400 calls from two API
    processes, 8 threads, of two sizes (max_tokens 1,600 and 3,000, so every event
    settles its window down). Far from the limits the processes admit on leases (a
    share of each window, counted in it when taken); a call that does not fit its
    lease's tokens asks Redis. The window, sampled throughout, never holds more than
    the limits; once the leases are given back and the events recorded, it holds
    exactly the calls served and the tokens they used."""
    make_customer("key-leased")
    scope = f"key:{_key_id(app, 'key-leased')}"
    _limit(
        client,
        f"/v1/billing/keys/{_key_id(app, 'key-leased')}/rate-limits",
        requests_per_minute=1_000,
        tokens_per_minute=1_500_000,
    )
    other = enforcing_app(app, settings, tmp_path / "other-spool")
    processes = [enforcing, other]
    bodies = [{"prompt": "x", "max_tokens": 1600}, {"prompt": "x", "max_tokens": 3000}]
    minute = _fresh_minute(40)
    before = _on_lease()
    samples: list[tuple[int, int]] = []
    sampling = threading.Event()

    def sample() -> None:
        while not sampling.is_set():
            samples.append(_window(app, scope, minute))
            time.sleep(0.002)

    def burst(each: int) -> list[Any]:
        def calls(i: int) -> list[Any]:
            caller = processes[i % 2].test_client()
            return [metered_call(caller, "key-leased", bodies[n % 2]) for n in range(each)]

        return [a for batch in together(8, calls) for a in batch]

    sampler = threading.Thread(target=sample)
    sampler.start()
    far = burst(25)  # 200 calls: far from both limits
    on_lease = _on_lease() - before
    answers = far + burst(150)
    sampling.set()
    sampler.join()
    assert int(time.time() // 60) == minute  # the burst fell in one window
    served = [a for a in answers if a.status_code == 200]
    most = tuple(max(values) for values in zip(*samples, strict=True))
    measured(
        f"rate-limit leases: 1,400 calls from 2 processes against 1,000 rpm / 1.5M tpm: "
        f"of the first 200, {on_lease:.0f} on a lease; served={len(served)}; window at "
        f"most {most} over {len(samples)} samples"
    )
    assert {a.status_code for a in far} == {200}
    # A lease holds 1/64 of what is left, a pool of ~10 calls' tokens at first: about one
    # call in ten asks Redis, a few more where the two processes' threads race.
    assert on_lease >= 0.6 * len(far)
    assert {a.status_code for a in answers} == {200, 429}
    assert len(served) <= 1_000
    assert most[0] <= 1_000 and most[1] <= 1_500_000
    assert all(a.headers["x-ratelimit-limit-requests"] == "1000" for a in served)
    assert all(int(a.headers["x-ratelimit-remaining-tokens"]) >= 0 for a in served)
    for process in processes:
        close_enforcing(process)  # every call recorded, every lease given back
    wait_for(lambda: _window(app, scope, minute) == (len(served), len(served) * CALL_TOKENS))


def test_rate_limits_are_refused_when_malformed(client: FlaskClient, make_customer) -> None:
    customer = make_customer("key-shape")
    path = f"/v1/billing/customers/{customer.id}/rate-limits"
    for body, field in (
        ({"requests_per_minute": 0}, "requests_per_minute"),
        ({"tokens_per_minute": "many"}, "tokens_per_minute"),
        ({"per_hour": 5}, "per_hour"),
    ):
        resp = client.put(path, json=body, headers=auth(ADMIN_TOKEN))
        assert resp.status_code == 400 and resp.get_json()["error"]["field"] == field
    most = {"requests_per_minute": 10**12, "tokens_per_minute": 10**12}
    [kept] = _limit(client, path, **most)["limits"]
    assert (kept["requests_per_minute"], kept["tokens_per_minute"]) == (10**12, 10**12)
    assert (
        client.put(
            "/v1/billing/keys/999999/rate-limits", json={}, headers=auth(ADMIN_TOKEN)
        ).status_code
        == 404
    )
    assert (
        client.put(path, json={"requests_per_minute": 5}, headers=auth("key-shape")).status_code
        == 403
    )
