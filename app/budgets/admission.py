"""Admission of metered calls: before the metered view runs, with no database work.

Installed by ``create_app`` with ``UsageMeter`` when ``ENFORCE_BUDGETS`` is on. For a call whose key
the service knows: a revoked key gets 401; a call that would pass a hard budget
gets 402 (``budget_exceeded``, with the limit and the period's end, and
``Retry-After`` until it resets); otherwise the call reserves its estimated cost
(``app.budgets.counters``) and is served; far from every hard limit it takes a
lease, and the process admits the key's next calls itself (``app.budgets.leases``).
The reservation is released by the worker when the call's event is recorded (the
event carries the call's id in its metadata), or at the response when the call
produced no event.

A key Redis has no record of (unknown to it, or its state lost: a rebuild of all
is then queued) is looked up in PostgreSQL, and its customer's record and budgets'
spend published, before the call is decided: a key no customer holds gets 401, and
a customer at its limit is refused though Redis lost everything a moment ago. Keys
found unknown are remembered for a minute, so a stream of made-up keys costs one
lookup each, not one per call.

Redis unreachable: the call is served and logged (``BUDGET_REDIS_DOWN=open``, the
default) or refused with 503 (``closed``).
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from functools import partial

import redis
from flask import Response, current_app, g, jsonify, request

from app.budgets.counters import REBUILDING, Admission, Counters, from_units
from app.budgets.leases import Leases
from app.budgets.spend import REBUILD_TASK, Estimates, is_credit_rule, sync_customer
from app.columns import utcnow
from app.config import Settings
from app.customers.keys import keys_changed
from app.customers.services import customer_for_key_hash
from app.database import UNAVAILABLE as DATABASE_UNAVAILABLE
from app.errors import (
    AuthenticationError,
    BudgetExceeded,
    CreditsExhausted,
    RateLimited,
    ServiceError,
    ServiceUnavailable,
)
from app.extensions import db
from app.ingest.meter import METERED_PREFIX, api_key_of
from app.observability.metrics import BUDGET_ADMISSIONS, BUDGET_REFUSALS
from app.ratelimits.limits import estimate_tokens, headers, retry_after
from app.registry import services
from app.security import hash_api_key

log = logging.getLogger("usage_billing.budgets")
# Made at import, so both are exported at 0 before the first outage: the
# BudgetChecksUnavailable rule's increase() cannot see a series' first sample.
_UNCHECKED, _UNAVAILABLE = (
    BUDGET_ADMISSIONS.labels("unchecked"),
    BUDGET_REFUSALS.labels("unavailable"),
)


def make_counters(settings: Settings) -> Counters | None:
    """The budget counters in Redis; None without Redis (the embedded default)."""
    if not settings.redis_url:
        return None
    timeout = settings.budget_redis_timeout_ms / 1000
    client = redis.Redis.from_url(
        settings.redis_url, socket_connect_timeout=timeout, socket_timeout=timeout
    )
    return Counters(client, settings.budget_reservation_ttl_seconds)


def make_leases(counters: Counters | None, settings: Settings) -> Leases | None:
    """The process's admission leases (``BUDGET_LEASE_SECONDS`` 0: every call asks Redis)."""
    if counters is None:
        return None
    return Leases(
        counters, settings.redis_url, settings.budget_lease_seconds, settings.budget_lease_calls
    )


def _error(error: ServiceError, headers: dict[str, str] | None = None) -> Response:
    response = jsonify(error.to_dict())
    response.status_code = error.status
    response.headers.update(headers or {})
    return response


def _request_rebuild(counters: Counters) -> None:
    """Queue one rebuild of the lost state (at most one per five minutes)."""
    try:
        if counters.redis.set(REBUILDING, "1", nx=True, ex=300):
            services().celery.send_task(REBUILD_TASK)
    except Exception as exc:  # noqa: BLE001 - the broker down too: the Beat job rebuilds
        log.warning("could not queue the budgets' rebuild: %s", exc)


def _unavailable(why: str) -> Response | None:
    """Redis cannot decide: serve (open) or refuse (closed), and say so in the log."""
    if current_app.config["SETTINGS"].budget_redis_down == "closed":
        log.error("budget check unavailable (%s): call refused", why)
        _UNAVAILABLE.inc()
        error = ServiceUnavailable("budgets cannot be checked right now; retry shortly")
        return _error(error, {"Retry-After": str(error.retry_after_seconds)})
    log.warning("budget check unavailable (%s): call served unchecked", why)
    _UNCHECKED.inc()
    return None


def _refused(admission: Admission, now: datetime) -> Response:
    rule, period = admission.rule, admission.period
    assert rule is not None and period is not None
    if is_credit_rule(rule):
        BUDGET_REFUSALS.labels("credits_exhausted").inc()
        return _error(
            CreditsExhausted(
                "the prepaid credit is used up: buy more (POST /v1/billing/credits/checkout)",
                field="Authorization",
            )
        )
    limit = from_units(rule.metric, rule.limit_units)
    error = BudgetExceeded(
        f"the {rule.period} budget ({rule.metric}) is used up until {period.ends_at.isoformat()}",
        limit=str(limit),
        metric=rule.metric,
        period_end=period.ends_at.isoformat(),
    )
    wait = max(1, int((period.ends_at - now).total_seconds()))
    BUDGET_REFUSALS.labels("budget_exceeded").inc()
    return _error(error, {"Retry-After": str(wait)})


_UNKNOWN_FOR_SECONDS = 60.0
_unknown: dict[str, float] = {}  # key hash → until when it is known to be no one's
_UNKNOWN_KEPT = 10_000


def _known_to_nobody(key_hash: str, now: float) -> bool:
    until = _unknown.get(key_hash)
    return until is not None and until > now


def _load(counters: Counters, key_hash: str, now: datetime) -> bool:
    """Publish the record of the customer holding this key (and its budgets' spend)
    from PostgreSQL; False when no customer holds it."""
    if _known_to_nobody(key_hash, now.timestamp()):
        return False
    customer = customer_for_key_hash(key_hash)
    if customer is None:
        if len(_unknown) >= _UNKNOWN_KEPT:
            _unknown.clear()
        _unknown[key_hash] = now.timestamp() + _UNKNOWN_FOR_SECONDS
        db.session.rollback()
        return False
    defaults = Estimates.from_settings(current_app.config["SETTINGS"])
    sync_customer(counters, customer.id, now, defaults)
    db.session.commit()
    return True


def _unknown_key() -> Response:
    BUDGET_REFUSALS.labels("unknown_key").inc()
    return _error(AuthenticationError("unknown API key", field="Authorization"))


def admit() -> Response | None:
    """``before_request`` of the metered routes: None to serve the call, or the refusal."""
    if not request.path.startswith(METERED_PREFIX):
        return None
    api_key = api_key_of(request)
    leases = services().budget_leases
    if api_key is None:
        return None if leases is None else _unknown_key()
    if leases is None:
        return None
    now = datetime.now(UTC)
    key_hash = hash_api_key(api_key)
    try:
        settings = current_app.config["SETTINGS"]
        tokens = partial(estimate_tokens, request, settings.rate_limit_default_output_tokens)
        admission = leases.admit(key_hash, now, tokens)
        if admission.verdict in ("not_loaded", "unknown_key"):
            if admission.verdict == "not_loaded":
                _request_rebuild(leases.counters)
            if not _load(leases.counters, key_hash, now):
                return _unknown_key()
            admission = leases.admit(key_hash, now, tokens)
    except redis.RedisError as exc:
        return _unavailable(type(exc).__name__)
    except DATABASE_UNAVAILABLE as exc:
        db.session.rollback()
        return _unavailable(f"database: {type(exc).__name__}")
    if admission.verdict in ("not_loaded", "unknown_key"):  # published, yet not found
        return _unavailable("the key's record is not in Redis")
    if admission.verdict == "revoked":
        BUDGET_REFUSALS.labels("revoked_key").inc()
        return _error(AuthenticationError("this API key is revoked", field="Authorization"))
    if admission.verdict == "rate_limited":
        return _rate_limited(admission)
    if admission.verdict == "refused":
        return _refused(admission, now)
    if admission.rate is not None:
        g.rate_limits = admission.rate
    if admission.reserved or admission.tokens_held:
        # UsageMeter tags the call's event with its id, or calls back if there is none.
        g.budget_call = admission.call
        if admission.tokens_held:
            g.tokens_held = admission.tokens_held
        g.release_unmetered = partial(
            _release, leases.counters, admission.reserved, admission.call, admission.tokens_held
        )
    return None


def _rate_limited(admission: Admission) -> Response:
    rate = admission.rate
    assert rate is not None
    BUDGET_REFUSALS.labels("rate_limited").inc()
    what = rate["what"]
    error = RateLimited(
        f"rate limit reached: {rate['limit']} {what} per minute; retry after the minute turns",
        field="Authorization",
    )
    return _error(error, {"Retry-After": retry_after(rate)})


def add_rate_limit_headers(resp: Response) -> Response:
    """``after_request``: an admitted call under a rate limit carries OpenAI's
    ``x-ratelimit-*`` headers (the tightest of the customer's and the key's limits)."""
    rate = g.get("rate_limits")
    if rate is not None:
        resp.headers.extend(headers(rate))  # none of them is there yet
    return resp


def _release(counters: Counters, reserved: tuple[str, ...], call: str, tokens: int) -> None:
    """The call produced no event: its reservation goes now (the worker never sees it),
    and the tokens it reserved under a limit are given back."""
    try:
        counters.release(reserved, [call])
        if tokens:
            counters.settle_tokens([(call, 0, tokens)])
    except redis.RedisError as exc:  # it lapses after BUDGET_RESERVATION_TTL_SECONDS
        log.warning("reservation of call %s not released: %s", call, exc)


def publish_customer(customer_id: int) -> None:
    """Publish a customer's keys and budgets (with what each has spent) to Redis now,
    after a change, and end the leases of its keys in every API process; should Redis
    be away, the minute's rebuild job publishes them (and a lease ends within
    ``BUDGET_LEASE_SECONDS``)."""
    leases = services().budget_leases
    if leases is None:
        return
    defaults = Estimates.from_settings(current_app.config["SETTINGS"])
    try:
        leases.announce(sync_customer(leases.counters, customer_id, utcnow(), defaults))
    except redis.RedisError as exc:
        log.warning("budgets of customer %s not published yet: %s", customer_id, exc)


def watch_key_changes() -> None:
    """Publish a customer's keys whenever they change (a revoked key is refused at once)."""
    keys_changed.connect(publish_customer, weak=False)
