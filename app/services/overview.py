"""What an operator checks at a glance (``/admin``): the scheduled jobs and reports that
need manual billing (``job_status``), unpriced models, parked events, the top
customers of the month, and how far ingest lags.

Each figure is one indexed read, so the page stays fast at any history. The month's
top customers are the one sum over many rollup rows (every key's every day): the
days before today are summed once per ``_CLOSED_DAYS_TTL`` per process and today's
are added live, so a late event for a past day shows within ten minutes.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections import defaultdict
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import func, select

from app.config import Settings
from app.customers.models import ApiKey, BillingCustomer
from app.extensions import db
from app.ingest.models import RejectedEvent, UsageDaily, UsageEvent
from app.models.types import money_str
from app.services.scheduled import job_status

UNPRICED_DAYS = 30
TOP_CUSTOMERS = 10
LAG_SAMPLE = 1000  # the latest events stored, for the ingest lag
_CLOSED_DAYS_TTL = 600.0


def unpriced_models(today: date) -> list[dict[str, Any]]:
    """Models with unpriced events in the last ``UNPRICED_DAYS`` days (a partial index
    holds only such rollup rows)."""
    since = today - timedelta(days=UNPRICED_DAYS)
    rows = db.session.execute(
        select(
            UsageDaily.provider,
            UsageDaily.model,
            func.sum(UsageDaily.unpriced_events).label("events"),
            func.max(UsageDaily.day).label("last_day"),
        )
        .where(UsageDaily.unpriced_events > 0, UsageDaily.day >= since)
        .group_by(UsageDaily.provider, UsageDaily.model)
        .order_by(func.sum(UsageDaily.unpriced_events).desc())
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


class _ClosedDays:
    """Each key's cost over the month's days before today, summed once per TTL."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._cached: dict[tuple[date, date], tuple[float, dict[str, Decimal]]] = {}

    def get(self, first: date, today: date) -> dict[str, Decimal]:
        key = (first, today)
        with self._lock:
            hit = self._cached.get(key)
            if hit is not None and time.monotonic() - hit[0] < _CLOSED_DAYS_TTL:
                return hit[1]
        costs = _cost_by_key(first, today - timedelta(days=1))
        with self._lock:
            self._cached = {key: (time.monotonic(), costs)}
        return costs


_closed_days = _ClosedDays()


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
    """The customers with the highest cost this month so far."""
    first = today.replace(day=1)
    by_key: dict[str, Decimal] = defaultdict(Decimal, _closed_days.get(first, today))
    for key_hash, cost in _cost_by_key(today, today).items():
        by_key[key_hash] += cost
    by_customer: dict[int, Decimal] = defaultdict(Decimal)
    owners = (
        dict(
            db.session.execute(
                select(ApiKey.key_hash, ApiKey.customer_id).where(ApiKey.key_hash.in_(list(by_key)))
            ).all()
        )
        if by_key
        else {}
    )
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


def ingest_lag(now: datetime) -> dict[str, Any]:
    """From an event's time to its row being stored, over the latest events stored,
    and how long ago the latest was stored."""
    rows = db.session.execute(
        select(UsageEvent.created_at, UsageEvent.received_at)
        .order_by(UsageEvent.created_at.desc())
        .limit(LAG_SAMPLE)
    ).all()
    if not rows:
        return {"sample": 0, "p50_seconds": None, "p99_seconds": None, "last_stored": None}
    lags = sorted(max((r.received_at - r.created_at).total_seconds(), 0.0) for r in rows)
    latest = max(r.received_at for r in rows)
    return {
        "sample": len(lags),
        "p50_seconds": round(statistics.median(lags), 3),
        "p99_seconds": round(lags[min(len(lags) - 1, int(len(lags) * 0.99))], 3),
        "last_stored": latest.isoformat(),
        "seconds_since_last_stored": round((now - latest).total_seconds(), 1),
    }


def overview(settings: Settings, now: datetime) -> dict[str, Any]:
    today = now.date()
    return {
        "as_of": now.isoformat(),
        "status": job_status(settings, now),
        "unpriced_models": unpriced_models(today),
        "parked_events": parked_events(),
        "top_customers": top_customers(today),
        "ingest_lag": ingest_lag(now),
        "flower_url": settings.flower_url,
    }
