"""What an operator checks at a glance (``/admin``): the scheduled jobs and reports that
need manual billing (``job_status``), unpriced models, usage flagged as possibly short
(streams cut off), parked events, the top
customers of the month, and how far ingest lags.

Each figure is one indexed read, so the page stays fast at any history, but for the
month's top customers: one sum over every key's every day of the month (a second
or so at 10,000 customers). Beat computes it every five minutes and keeps it in
Redis, where the page reads it with the time it was taken; without Redis (the
embedded default, a few rows) the page computes it.
"""

from __future__ import annotations

import json
import logging
import statistics
from collections import defaultdict
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any

import redis
from sqlalchemy import func, select

from app.columns import money_str
from app.config import Settings
from app.customers.models import ApiKey, BillingCustomer
from app.extensions import db
from app.ingest.models import IngestBatch, RejectedEvent, UsageDaily
from app.jobs.definitions import job_status
from app.jobs.timetable import OVERVIEW_EVERY_SECONDS

UNPRICED_DAYS = 30
TOP_CUSTOMERS = 10
LAG_SAMPLE = 1000  # the latest batches stored, for the ingest lag
TOP_KEY = "ub:overview:top_customers"
# Three of Beat's periods: a missed run or two is not noticed.
SNAPSHOT_TTL_SECONDS = int(3 * OVERVIEW_EVERY_SECONDS)

log = logging.getLogger("usage_billing.overview")


def _models_with(column: Any, today: date) -> list[dict[str, Any]]:
    """Models whose rollup rows of the last ``UNPRICED_DAYS`` days count events of
    ``column`` (a partial index holds only such rows)."""
    since = today - timedelta(days=UNPRICED_DAYS)
    rows = db.session.execute(
        select(
            UsageDaily.provider,
            UsageDaily.model,
            func.sum(column).label("events"),
            func.max(UsageDaily.day).label("last_day"),
        )
        .where(column > 0, UsageDaily.day >= since)
        .group_by(UsageDaily.provider, UsageDaily.model)
        .order_by(func.sum(column).desc())
        .limit(50)
    )
    return [
        {
            "provider": r.provider,
            "model": r.model,
            "events": int(r.events),
            "last_day": r.last_day.isoformat(),
        }
        for r in rows
    ]


def unpriced_models(today: date) -> list[dict[str, Any]]:
    """Models with unpriced events: a price the catalogue lacks."""
    return _models_with(UsageDaily.unpriced_events, today)


def flagged_usage(today: date) -> list[dict[str, Any]]:
    """Models with events whose usage may fall short of what the provider billed (a
    stream cut off before its usage, or one that carried none)."""
    return _models_with(UsageDaily.flagged_events, today)


def parked_events() -> dict[str, Any]:
    """How many events wait in the park, and the latest few with their reasons."""
    count = db.session.scalar(select(func.count()).select_from(RejectedEvent)) or 0
    latest = db.session.scalars(select(RejectedEvent).order_by(RejectedEvent.id.desc()).limit(10))
    return {
        "count": count,
        "latest": [
            {
                "event_id": r.event_id,
                "field": r.field,
                "reason": r.reason,
                "parked_at": r.created_at.isoformat(),
            }
            for r in latest
        ],
    }


def _cost_by_key(first: date, last: date) -> dict[str, Decimal]:
    if last < first:
        return {}
    rows = db.session.execute(
        select(UsageDaily.api_key_hash, func.sum(UsageDaily.cost_total))
        .where(UsageDaily.day.between(first, last))
        .group_by(UsageDaily.api_key_hash)
    )
    return {key_hash: Decimal(cost) for key_hash, cost in rows}


def top_customers(today: date) -> list[dict[str, Any]]:
    """The customers with the highest cost this month so far (one sum over every key's
    every day of the month: the figure ``top_customers_snapshot`` keeps)."""
    by_key = _cost_by_key(today.replace(day=1), today)
    owners = dict(
        db.session.execute(
            select(ApiKey.key_hash, ApiKey.customer_id).where(ApiKey.key_hash.in_(list(by_key)))
        ).all()
    )
    by_customer: dict[int, Decimal] = defaultdict(Decimal)
    for key_hash, cost in by_key.items():
        if key_hash in owners:
            by_customer[owners[key_hash]] += cost
    top = sorted(by_customer.items(), key=lambda item: (-item[1], item[0]))[:TOP_CUSTOMERS]
    names = dict(
        db.session.execute(
            select(BillingCustomer.id, BillingCustomer.name).where(
                BillingCustomer.id.in_([customer_id for customer_id, _ in top])
            )
        ).all()
    )
    return [
        {"customer_id": customer_id, "name": names.get(customer_id), "cost": money_str(cost)}
        for customer_id, cost in top
    ]


UNATTRIBUTED_DAYS = 7


def unattributed_keys(today: date) -> list[dict[str, Any]]:
    """Keys with usage in the last ``UNATTRIBUTED_DAYS`` that no customer holds: calls
    metered for no one (admission refuses them only when it enforces budgets). Named
    by the start of their hash, never by the key."""
    holders = select(ApiKey.key_hash).where(ApiKey.key_hash == UsageDaily.api_key_hash)
    rows = db.session.execute(
        select(
            UsageDaily.api_key_hash,
            func.sum(UsageDaily.events).label("events"),
            func.max(UsageDaily.day).label("last_day"),
        )
        .where(UsageDaily.day >= today - timedelta(days=UNATTRIBUTED_DAYS), ~holders.exists())
        .group_by(UsageDaily.api_key_hash)
        .order_by(func.sum(UsageDaily.events).desc())
        .limit(20)
    )
    return [
        {
            "key_hash": r.api_key_hash[:16],
            "events": int(r.events),
            "last_day": r.last_day.isoformat(),
        }
        for r in rows
    ]


def refresh_top_customers(cache: redis.Redis | None, now: datetime) -> dict[str, Any]:
    """Compute the month's top customers (and the week's keys no customer holds, as
    costly a sum) and keep them in ``cache`` (Beat, every ``OVERVIEW_EVERY_SECONDS``)."""
    snapshot = {
        "as_of": now.isoformat(),
        "month": now.date().isoformat()[:7],
        "customers": top_customers(now.date()),
        "unattributed": unattributed_keys(now.date()),
    }
    if cache is not None:
        try:
            cache.set(TOP_KEY, json.dumps(snapshot), ex=SNAPSHOT_TTL_SECONDS)
        except redis.RedisError as exc:
            log.warning("could not keep the top customers: %s", type(exc).__name__)
    return snapshot


def top_customers_snapshot(cache: redis.Redis | None, now: datetime) -> dict[str, Any]:
    """The month's top customers as last computed (at most ``SNAPSHOT_TTL_SECONDS`` old),
    computed now when there is none for this month (or no Redis to keep one)."""
    if cache is not None:
        try:
            raw = cache.get(TOP_KEY)
        except redis.RedisError:
            raw = None
        if raw:
            snapshot = json.loads(raw)
            if snapshot["month"] == now.date().isoformat()[:7]:
                return snapshot
    return refresh_top_customers(cache, now)


def ingest_lag(now: datetime) -> dict[str, Any]:
    """From the API accepting a batch to its rows being stored, over the latest
    ``LAG_SAMPLE`` batches recorded (in the order they were stored, not by the
    events' own time, which a client may set to any past moment), and how long ago
    the latest was stored."""
    rows = db.session.execute(
        select(IngestBatch.accepted_at, IngestBatch.recorded_at)
        .order_by(IngestBatch.recorded_at.desc())
        .limit(LAG_SAMPLE)
    ).all()
    timed = [r for r in rows if r.accepted_at is not None]
    if not rows:
        return {"sample": 0, "p50_seconds": None, "p99_seconds": None, "last_stored": None}
    lags = sorted(max((r.recorded_at - r.accepted_at).total_seconds(), 0.0) for r in timed)
    latest = max(r.recorded_at for r in rows)
    return {
        "sample": len(lags),
        "p50_seconds": round(statistics.median(lags), 3) if lags else None,
        "p99_seconds": round(lags[min(len(lags) - 1, int(len(lags) * 0.99))], 3) if lags else None,
        "last_stored": latest.isoformat(),
        "seconds_since_last_stored": round((now - latest).total_seconds(), 1),
    }


def overview(settings: Settings, now: datetime, cache: redis.Redis | None) -> dict[str, Any]:
    today = now.date()
    return {
        "as_of": now.isoformat(),
        "status": job_status(settings, now),
        "unpriced_models": unpriced_models(today),
        "flagged_usage": flagged_usage(today),
        "parked_events": parked_events(),
        "top_customers": top_customers_snapshot(cache, now),
        "ingest_lag": ingest_lag(now),
        "flower_url": settings.flower_url,
    }
