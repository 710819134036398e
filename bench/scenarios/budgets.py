"""Budgets, credits and rate limits: what admission adds to a metered call, and how far
concurrent calls overshoot a hard limit or a prepaid balance, ours against a naive
check-then-add.

Overhead: ``/v1/execute`` with metering on, enforcement off, on (with its leases,
as shipped) and on asking Redis on every call (``BUDGET_LEASE_SECONDS=0``), and on
for a caller held by everything at once (a hard budget, a prepaid balance that
stops at zero, and requests and tokens per minute, each far from its limit: its
leases are counted in the minute's windows), four stacks up at once and one
client alternating between them call by call (a kept-alive connection to each),
the caller under limits it never reaches.

Overshoot: a limit that fits ten calls, two spent and recorded; then 64 calls at
once. Ours goes through the stack (``ENFORCE_BUDGETS=true``); the same for a
prepaid balance that fits ten calls. The naive check
(LiteLLM's: read the spend, serve if below the limit, add the cost when the call
is done) runs here against the same Redis, each call taking the stack's measured
median time, so both meet the same 64-at-once load.
"""

from __future__ import annotations

import http.client
import json
import statistics
import threading
import time
import uuid
from decimal import Decimal
from typing import Any

import redis

from app.security import hash_api_key
from bench.load import alternating_latencies, execute_request, one_request
from bench.stack import ADMIN_TOKEN, REDIS_URL, Run, Stack, log

ORDER = 35
REQUESTS = 20000
# The stacks compared, call by call: no admission; admission as shipped (with its
# leases); admission asking Redis on every call.
SIDES = (
    ("off", 8716, {"ENFORCE_BUDGETS": "false"}),
    ("on", 8717, {"ENFORCE_BUDGETS": "true"}),
    ("on_without_leases", 8718, {"ENFORCE_BUDGETS": "true", "BUDGET_LEASE_SECONDS": "0"}),
    ("everything", 8719, {"ENFORCE_BUDGETS": "true"}),
)
CONCURRENT = 64
FITS = 10  # calls the limit fits
CALL_TOKENS = 4 + 256  # the demo /v1/execute's usage for a one-word prompt
_BODY = b'{"prompt": "fizzbuzz"}'


def _admin(port: int, method: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request(
        method,
        path,
        json.dumps(body),
        {"Authorization": f"Bearer {ADMIN_TOKEN}", "Content-Type": "application/json"},
    )
    response = conn.getresponse()
    answer = json.loads(response.read())
    if response.status >= 300:
        raise RuntimeError(f"{path} answered {response.status}: {answer}")
    return answer


def _budgeted(port: int, key: str, limit: int) -> tuple[int, int]:
    """A customer with this key and a hard daily token budget: the budget's id and
    the customer's."""
    customer = _admin(
        port,
        "POST",
        "/v1/billing/customers",
        {"email": f"{key}@example.com", "name": "bench", "api_key": key},
    )
    budget = _admin(
        port,
        "POST",
        f"/v1/billing/customers/{customer['id']}/budgets",
        {
            "metric": "tokens",
            "period": "day",
            "limit": str(limit),
            "hard_limit": True,
            "thresholds": [],
        },
    )
    return int(budget["id"]), int(customer["id"])


def _held_by_everything(port: int, customer: int) -> None:
    """The customer, beside its budget: prepaid, stopping at zero, with credit it
    never uses up, and rate limits it never reaches."""
    _admin(port, "PUT", f"/v1/billing/customers/{customer}/credits", {"overage": "block"})
    _admin(port, "POST", f"/v1/billing/customers/{customer}/credits/grants", {"amount": "100000"})
    _admin(
        port,
        "PUT",
        f"/v1/billing/customers/{customer}/rate-limits",
        {"requests_per_minute": 10**9, "tokens_per_minute": 10**12},
    )


def _status(port: int, key: str) -> int:
    return one_request(port, execute_request(key, _BODY))


def _loaded(r: redis.Redis, key: str) -> None:
    """Wait until the key's record is in Redis (published when its customer and budget
    were made, or by the rebuild its first call asked for): its calls are decided there."""
    record = "ub:budget:key:" + hash_api_key(key)
    deadline = time.monotonic() + 60
    while not r.exists(record):
        if time.monotonic() > deadline:
            raise RuntimeError("the key's record was not published")
        time.sleep(0.2)


def _at_once(action: Any) -> list[Any]:
    barrier = threading.Barrier(CONCURRENT)
    results: list[Any] = []

    def run() -> None:
        barrier.wait()
        results.append(action())

    threads = [threading.Thread(target=run) for _ in range(CONCURRENT)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def _spend_of(r: redis.Redis, budget_id: int) -> int:
    keys = list(r.scan_iter(f"ub:budget:{budget_id}:*:spend"))
    return int(r.get(keys[0]) or 0) if keys else 0


def run(run: Run, results: dict[str, Any]) -> None:
    r = redis.Redis.from_url(REDIS_URL)
    figures: dict[str, Any] = {}
    targets: dict[str, tuple[Stack, int, str]] = {}
    for side, port, settings in SIDES:
        log(f"budgets: a stack with admission {side}")
        stack = Stack(run, middleware=True, port=port, **settings)
        stack.start_api(workers=1)
        stack.start_worker()
        key = f"bench-budget-{side}-{uuid.uuid4().hex}"
        _, customer = _budgeted(port, key, limit=10**11)  # never reached
        if side == "everything":
            _held_by_everything(port, customer)
        _status(port, key)  # with enforcement: asks for the rebuild of the state
        if settings["ENFORCE_BUDGETS"] == "true":
            _loaded(r, key)
        targets[side] = (stack, port, key)
    pairs = [(port, key) for _, port, key in targets.values()]
    alternating_latencies(pairs, 500, "warming up, admission off and on")
    measured = alternating_latencies(pairs, REQUESTS, "requests, admission off and on, alternating")
    for side, lat in zip(targets, measured, strict=True):
        figures[side] = {
            "p50_ms": round(statistics.median(lat) * 1000, 3),
            "p99_ms": round(statistics.quantiles(lat, n=100)[98] * 1000, 3),
        }
    median_call_s = statistics.median(measured[1])
    figures["overshoot"] = _ours(targets["on"][1], r)
    figures["overshoot"]["credits"] = _ours_credits(targets["on"][1])
    for stack, _, _ in targets.values():
        stack.stop()
    for on in ("on", "on_without_leases", "everything"):
        suffix = "" if on == "on" else f"_{on.removeprefix('on_')}"
        for q in ("p50", "p99"):
            figures[f"admission_{q}_overhead_ms{suffix}"] = round(
                figures[on][f"{q}_ms"] - figures["off"][f"{q}_ms"], 3
            )
    figures["overshoot"]["naive"] = _naive(r, median_call_s)
    results["budgets"] = figures


def _ours(port: int, r: redis.Redis) -> dict[str, Any]:
    log(f"budgets: {CONCURRENT} calls at once against a limit that fits {FITS - 2} more")
    key = f"bench-overshoot-{uuid.uuid4().hex}"
    budget_id, _ = _budgeted(port, key, limit=FITS * CALL_TOKENS)
    deadline = time.monotonic() + 60
    for n in (1, 2):  # each recorded and mirrored before the next: its estimate is known
        assert _status(port, key) == 200
        while _spend_of(r, budget_id) < n * CALL_TOKENS:
            if time.monotonic() > deadline:
                raise RuntimeError("the warm-up calls were not settled")
            time.sleep(0.1)
    statuses = _at_once(lambda: _status(port, key))
    served = statuses.count(200)
    return {
        "ours": {
            "served": served,
            "refused": statuses.count(402),
            "overshoot_calls": max(0, served - (FITS - 2)),
        }
    }


def _get(port: int, key: str, path: str) -> dict[str, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", path, headers={"Authorization": f"Bearer {key}"})
    return json.loads(conn.getresponse().read())


def _burnt_after(port: int, key: str, calls: int) -> Decimal:
    """What the customer's grants paid, once the worker has recorded ``calls`` calls
    and burnt them (the burn follows the batch's commit: the figure has settled)."""
    today = time.strftime("%Y-%m-%d", time.gmtime())
    usage = f"/v1/billing/usage?start_date={today}&end_date={today}&granularity=total"
    deadline = time.monotonic() + 60
    last = None
    while time.monotonic() < deadline:
        stored = _get(port, key, usage)["totals"]["events"]
        entries = _get(port, key, "/v1/billing/credits")["entries"]
        burnt = -sum((Decimal(e["amount"]) for e in entries if e["kind"] == "burn"), Decimal(0))
        if stored >= calls and burnt == last:
            return burnt
        last = burnt if stored >= calls else None
        time.sleep(0.3)
    raise RuntimeError("the calls were not recorded and burnt")


def _ours_credits(port: int) -> dict[str, Any]:
    """A prepaid balance that fits ten calls (what a call costs measured on two, paid
    from a first grant), two spent; then 64 calls at once."""
    log(f"credits: {CONCURRENT} calls at once against a balance that fits {FITS - 2} more")
    key = f"bench-credits-{uuid.uuid4().hex}"
    _, customer = _budgeted(port, key, limit=10**11)
    path = f"/v1/billing/customers/{customer}/credits"
    _admin(port, "PUT", path, {"overage": "block"})
    first = _admin(port, "POST", f"{path}/grants", {"amount": "1"})
    assert [_status(port, key) for _ in range(2)] == [200, 200]
    call = _burnt_after(port, key, 2) / 2
    _admin(port, "POST", f"/v1/billing/credits/grants/{first['id']}/void", {})
    _admin(port, "POST", f"{path}/grants", {"amount": str((FITS - 2) * call)})
    time.sleep(0.5)  # the grant reaches admission (announced in Redis)
    statuses = _at_once(lambda: _status(port, key))
    served = statuses.count(200)
    burnt = _burnt_after(port, key, 2 + served) - 2 * call
    return {
        "served": served,
        "refused": statuses.count(402),
        "call_usd": str(call),
        "overshoot_calls": max(0, served - (FITS - 2)),
        "overshoot_usd": str(max(Decimal(0), burnt - (FITS - 2) * call)),
    }


def _naive(r: redis.Redis, call_s: float) -> dict[str, Any]:
    """Check-then-add: read the spend, serve if below the limit, add when done."""
    counter = f"bench:naive:{uuid.uuid4().hex}"
    r.set(counter, 2 * CALL_TOKENS)
    limit = FITS * CALL_TOKENS

    def call() -> bool:
        if int(r.get(counter) or 0) >= limit:
            return False
        time.sleep(call_s)  # the call is served meanwhile
        r.incrby(counter, CALL_TOKENS)
        return True

    served = _at_once(call).count(True)
    r.delete(counter)
    return {"served": served, "overshoot_calls": max(0, served - (FITS - 2))}


def headline(results: dict[str, Any]) -> dict[str, Any]:
    budgets = results.get("budgets", {})
    overshoot = budgets.get("overshoot", {})
    return {
        "admission_p99_overhead_ms": budgets.get("admission_p99_overhead_ms"),
        "budget_overshoot_calls": {
            side: overshoot[side]["overshoot_calls"] for side in ("ours", "naive")
        }
        if overshoot
        else None,
    }


def rows(results: dict[str, Any]) -> list[tuple[str, Any, str]]:
    budgets = results.get("budgets")
    if not budgets:
        return []
    ours, naive = budgets["overshoot"]["ours"], budgets["overshoot"]["naive"]
    credits = budgets["overshoot"].get("credits", {"served": None, "overshoot_calls": None})
    return [
        (
            "execute p50 / p99, admission off → on (ms)",
            f"{budgets['off']['p50_ms']} / {budgets['off']['p99_ms']} → "
            f"{budgets['on']['p50_ms']} / {budgets['on']['p99_ms']}",
            "",
        ),
        (
            "execute p50 / p99, admission on without leases (ms)",
            f"{budgets['on_without_leases']['p50_ms']} / {budgets['on_without_leases']['p99_ms']}",
            "",
        ),
        ("admission overhead p99 (ms)", budgets["admission_p99_overhead_ms"], "<= 0.3"),
        (
            "admission overhead p99 without leases (ms)",
            budgets["admission_p99_overhead_ms_without_leases"],
            "",
        ),
        (
            "admission overhead p99, budget + credits + rate limits (ms)",
            budgets.get("admission_p99_overhead_ms_everything"),
            "<= 0.3",
        ),
        (
            f"{CONCURRENT} calls at once, {FITS - 2} fit: served ours / naive",
            f"{ours['served']} / {naive['served']}",
            "",
        ),
        (
            "overshoot in calls, ours / naive",
            f"{ours['overshoot_calls']} / {naive['overshoot_calls']}",
            "ours 0",
        ),
        (
            f"credits: {CONCURRENT} calls at once, {FITS - 2} fit: served ours / naive",
            f"{credits['served']} / {naive['served']}",
            "",
        ),
        ("credits: overshoot in calls, ours", credits["overshoot_calls"], "0"),
    ]
