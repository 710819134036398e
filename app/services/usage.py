"""A customer's usage over a date range, read from the daily rollup.

Reading ``usage_daily`` (one row per key, day and model) keeps a 31-day query to
a few hundred rows however many events there are.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import date
from decimal import Decimal
from typing import Any

from sqlalchemy import select

from app.extensions import db
from app.ingest.models import UsageDaily
from app.models.types import money_str

_TOKEN_FIELDS = ("tokens_input", "tokens_output", "tokens_cache_read", "tokens_total")


def usage_between(api_key_hash: str, start: date, end: date) -> dict[str, Any]:
    rows = db.session.scalars(
        select(UsageDaily)
        .where(
            UsageDaily.api_key_hash == api_key_hash,
            UsageDaily.day >= start,
            UsageDaily.day <= end,
        )
        .order_by(UsageDaily.day, UsageDaily.provider, UsageDaily.model)
    ).all()
    totals: dict[str, Any] = {"events": 0, "unpriced_events": 0, "cost": Decimal(0)}
    totals.update(dict.fromkeys(_TOKEN_FIELDS, 0))
    days: dict[date, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        entry = {
            "provider": row.provider,
            "model": row.model,
            "events": row.events,
            "unpriced_events": row.unpriced_events,
            "cost": money_str(row.cost_total),
            **{name: getattr(row, name) for name in _TOKEN_FIELDS},
        }
        days[row.day].append(entry)
        totals["events"] += row.events
        totals["unpriced_events"] += row.unpriced_events
        totals["cost"] += row.cost_total
        for name in _TOKEN_FIELDS:
            totals[name] += getattr(row, name)
    totals["cost"] = money_str(totals["cost"])
    return {
        "start_date": start.isoformat(),
        "end_date": end.isoformat(),
        "currency": "usd",
        "totals": totals,
        "days": [
            {
                "date": day.isoformat(),
                "cost": money_str(sum((Decimal(m["cost"]) for m in models), Decimal(0))),
                "tokens_total": sum(m["tokens_total"] for m in models),
                "models": models,
            }
            for day, models in sorted(days.items())
        ],
    }
