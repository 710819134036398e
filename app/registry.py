"""The per-app services, built once in ``create_app``: the one way to reach them.

Views, tasks and the ``flask billing`` commands read ``services()``; a test
replaces one field (``services(app).stripe = fake``) and every other stays
real. Built at start-up, not on first use, so no two request threads race to
make one, and a forked worker process inherits what it will drop
(``tasks/worker.py``).

The registry sits below every capability (any of them may read it), while the
services in it come from the capabilities: their types are imported for the
type checker alone, and ``app/__init__.py`` builds them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from flask import Flask, current_app

if TYPE_CHECKING:
    import redis
    from celery import Celery

    from app.billing.gateway import StripeGateway
    from app.budgets.counters import Counters
    from app.budgets.leases import Leases
    from app.ingest.batch_store import BatchStore
    from app.ingest.outbox import Outbox

_EXTENSION = "usage_billing"


@dataclass
class Services:
    celery: Celery
    outbox: Outbox  # the spool both the metering middleware and the ingest endpoint fill
    stripe: StripeGateway  # one per app: its rate limiter is shared by every caller
    # What the processes share in Redis (short timeouts); None without Redis.
    redis: redis.Redis | None
    batches: BatchStore | None  # batches wait here and messages carry their ids
    budget_counters: Counters | None  # the budgets' Redis half
    budget_leases: Leases | None  # the calls this process admits itself


def install(app: Flask, built: Services) -> None:
    app.extensions[_EXTENSION] = built


def services(app: Flask | None = None) -> Services:
    """The services of ``app``, or of the app whose context is active."""
    registry: Services = (app or current_app).extensions[_EXTENSION]
    return registry
