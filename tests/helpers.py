"""Small builders shared by the tests."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from flask import Flask
from sqlalchemy import func, select

from app.extensions import db
from app.ingest.models import RejectedEvent, UsageEvent
from app.security import hash_api_key


def event(api_key: str = "key-a", **overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "event_id": f"evt-{uuid.uuid4().hex}",
        "api_key_hash": hash_api_key(api_key),
        "provider": "anthropic",
        "model": "claude-3-5-sonnet-20241022",
        "tokens_input": 1000,
        "tokens_output": 100,
        "timestamp": datetime.now(UTC).isoformat(),
        "task_type": "code_generation",
        "status": "success",
    }
    body.update(overrides)
    return body


def count_events(app: Flask, **where: Any) -> int:
    with app.app_context():
        stmt = select(func.count()).select_from(UsageEvent)
        for name, value in where.items():
            stmt = stmt.where(getattr(UsageEvent, name) == value)
        result = db.session.scalar(stmt)
        db.session.rollback()
        return int(result or 0)


def stored_events(app: Flask, **where: Any) -> list[UsageEvent]:
    with app.app_context():
        stmt = select(UsageEvent).order_by(UsageEvent.id)
        for name, value in where.items():
            stmt = stmt.where(getattr(UsageEvent, name) == value)
        rows = list(db.session.scalars(stmt))
        for row in rows:
            db.session.expunge(row)
        return rows


def parked_events(app: Flask, event_ids: list[str] | None = None) -> list[tuple[str, str | None]]:
    """(event id, field) of the parked events, oldest first; only these ids when given."""
    with app.app_context():
        stmt = select(RejectedEvent.event_id, RejectedEvent.field).order_by(RejectedEvent.id)
        if event_ids is not None:
            stmt = stmt.where(RejectedEvent.event_id.in_(event_ids))
        rows = [(row.event_id, row.field) for row in db.session.execute(stmt)]
        db.session.rollback()
        return rows
