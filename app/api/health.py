"""``/healthz`` (the process answers) and ``/readyz`` (its database and broker answer)."""

from __future__ import annotations

from typing import Literal

from flask import Blueprint
from sqlalchemy import text

from app.contract import Answer, operation
from app.extensions import db
from app.registry import services

health = Blueprint("health", __name__)


class Alive(Answer):
    """The process answers."""

    status: Literal["ok"]


class Readiness(Answer):
    """Whether the database and the broker answer, each with its error if not."""

    status: Literal["ready", "not_ready"]
    checks: dict[str, str]


@operation(health, "GET", "/healthz", summary="Process alive", answers={200: Alive})
def healthz() -> Alive:
    return Alive(status="ok")


@operation(
    health,
    "GET",
    "/readyz",
    summary="Database and broker reachable",
    answers={200: Readiness, 503: Readiness},
)
def readyz() -> tuple[Readiness, int]:
    checks: dict[str, str] = {}
    try:
        db.session.execute(text("SELECT 1"))
        checks["database"] = "ok"
    except Exception as exc:  # any failure means not ready; say which
        checks["database"] = f"error: {type(exc).__name__}"
    finally:
        db.session.rollback()
    try:
        with services().celery.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=2)
        checks["broker"] = "ok"
    except Exception as exc:
        checks["broker"] = f"error: {type(exc).__name__}"
    ready = all(v == "ok" for v in checks.values())
    answer = Readiness(status="ready" if ready else "not_ready", checks=checks)
    return answer, 200 if ready else 503
