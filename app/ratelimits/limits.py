"""Requests and tokens per minute: set by admins, decided by admission, settled by
the worker.

Admission (``app/budgets/lua/admit.lua``, the same script and round trip as the
budgets and the credit balance) counts each call in fixed windows of a UTC minute,
one per scope over the key (its customer's and its own): one request, and an
estimate of its tokens, since the tokens are known only after the call. The
estimate is the prompt, a token per 4 bytes of the request's body (OpenAI's rule
of thumb), and what the request allows the model to write (``max_tokens``,
``max_completion_tokens``, ``max_output_tokens`` or Gemini's ``maxOutputTokens``),
else ``RATE_LIMIT_DEFAULT_OUTPUT_TOKENS``. The worker moves the window from the
estimate to what the recorded event used (``settle_tokens``), so the next calls of
the same minute see the truth. A call over a limit gets 429 ``rate_limited`` with
``Retry-After`` (to the window's end); every call under a limit carries the
``x-ratelimit-*`` headers OpenAI's API sends.

Far from its limits a key is admitted on leases (``app.budgets.leases``): a lease
counts its calls in the window when it is taken, at most 1/``RATE_LEASE_SHARE`` of
what the window has left, and reserves a pool of tokens its calls take their own
estimates from; it ends with the minute, and what it did not use goes back. Near a
limit every call asks Redis.

Within a window, the requests admitted never pass the limit, nor do the tokens
reserved; a call's tokens beyond its estimate count from its settle on (a fixed
window may let up to twice a limit through across the turn of a minute, as
LiteLLM's and most per-minute limits do). What a lease holds unused is refused to
the key's other processes until it goes back (within ``BUDGET_LEASE_SECONDS``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from flask import Request
from sqlalchemy import select

from app.customers.models import ApiKey
from app.errors import ValidationError
from app.extensions import db
from app.ingest.validation import EventLimits, read_message
from app.ratelimits.models import RateLimit

_MAX_OUTPUT = ("max_tokens", "max_completion_tokens", "max_output_tokens")
BYTES_PER_TOKEN = 4


def customer_scope(customer_id: int) -> str:
    return f"customer:{customer_id}"


def key_scope(api_key_id: int) -> str:
    return f"key:{api_key_id}"


def set_limits(
    customer_id: int,
    api_key_id: int | None,
    requests_per_minute: int | None,
    tokens_per_minute: int | None,
) -> RateLimit | None:
    """Set (both None: remove) the limits of a customer, or of one of its keys (the
    caller commits and publishes)."""
    scope = key_scope(api_key_id) if api_key_id is not None else customer_scope(customer_id)
    limit = db.session.get(RateLimit, scope)
    if requests_per_minute is None and tokens_per_minute is None:
        if limit is not None:
            db.session.delete(limit)
        return None
    if limit is None:
        limit = RateLimit(scope=scope, customer_id=customer_id, api_key_id=api_key_id)
        db.session.add(limit)
    limit.requests_per_minute = requests_per_minute
    limit.tokens_per_minute = tokens_per_minute
    db.session.flush()
    return limit


def limits_of(customer_id: int) -> list[RateLimit]:
    return list(
        db.session.scalars(
            select(RateLimit).where(RateLimit.customer_id == customer_id).order_by(RateLimit.scope)
        )
    )


def limits_by_key(
    keys: Iterable[ApiKey],
) -> dict[int, tuple[tuple[str, int | None, int | None], ...]]:
    """For each key: the limits over it (its customer's, its own), as admission reads
    them. One query; none at all while no limit is set anywhere."""
    keys = list(keys)
    customer_ids = sorted({k.customer_id for k in keys})
    if not customer_ids:
        return {}
    found = {
        limit.scope: (limit.scope, limit.requests_per_minute, limit.tokens_per_minute)
        for limit in db.session.scalars(
            select(RateLimit).where(RateLimit.customer_id.in_(customer_ids))
        )
    }
    if not found:
        return {}
    return {
        key.id: tuple(
            found[scope]
            for scope in (customer_scope(key.customer_id), key_scope(key.id))
            if scope in found
        )
        for key in keys
    }


def estimate_tokens(req: Request, default_output: int) -> int:
    """What a call reserves under a tokens-per-minute limit, before it runs."""
    length = req.content_length or 0
    body = req.get_json(silent=True) if req.is_json else None
    output: Any = None
    if isinstance(body, dict):
        output = next((body[k] for k in _MAX_OUTPUT if k in body), None)
        config = body.get("generationConfig") or body.get("generation_config")
        if output is None and isinstance(config, dict):
            output = config.get("maxOutputTokens") or config.get("max_output_tokens")
    if not isinstance(output, int) or isinstance(output, bool) or output < 0:
        output = default_output
    return math.ceil(length / BYTES_PER_TOKEN) + output


def _duration(seconds: float) -> str:
    """A wait as OpenAI writes it (Go's durations): ``250ms``, ``17.5s``, ``1m0s``."""
    if seconds < 1:
        return f"{max(0, round(seconds * 1000))}ms"
    if seconds >= 60:
        return "1m0s"
    return f"{seconds:.3f}".rstrip("0").rstrip(".") + "s"


def headers(rate: dict[str, Any]) -> list[tuple[str, str]]:
    """The ``x-ratelimit-*`` headers of an admitted call (the tightest scope's)."""
    reset = _duration(float(rate["reset"]))
    out = []
    for what in ("requests", "tokens"):
        if what in rate:
            limit, left = rate[what]
            out.append((f"x-ratelimit-limit-{what}", str(limit)))
            out.append((f"x-ratelimit-remaining-{what}", str(max(0, left))))
            out.append((f"x-ratelimit-reset-{what}", reset))
    return out


def retry_after(rate: dict[str, Any]) -> str:
    """Whole seconds until the window that refused the call ends (at least 1)."""
    return str(max(1, math.ceil(float(rate["reset"]))))


def tokens_used(
    events: Iterable[Any], now: datetime, limits: EventLimits
) -> list[tuple[str, int, int]]:
    """(call id, tokens used, tokens reserved) of the events whose calls reserved tokens
    under a limit: the prompt and the output, every kind (cache and audio are parts of
    them)."""
    used = []
    for event in events:
        metadata = event.get("metadata") if isinstance(event, dict) else None
        if not isinstance(metadata, dict):
            continue
        call, held = metadata.get("budget_call"), metadata.get("tokens_held")
        if not isinstance(call, str) or not isinstance(held, int) or isinstance(held, bool):
            continue
        try:
            valid = read_message(event, now, limits)
        except ValidationError:  # parked by recording: it used nothing billable
            used.append((call, 0, held))
            continue
        used.append((call, valid.tokens_input + valid.tokens_output, held))
    return used
