"""Fixtures that start real things.

With PostgreSQL and Redis reachable (as on CI and the dev machine) the suite
runs against them: a fresh database per session, a private Redis database, and
a real Celery worker in a thread. Without them it runs on the embedded default
(SQLite file, filesystem broker) and skips only tests marked ``services``.
When ``CI=true`` (or ``REQUIRE_SERVICES=1``) a missing service is an error.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from app import create_app
from app.config import Settings
from app.customers.models import BillingCustomer
from app.extensions import db
from app.plans.services import default_plan
from app.registry import services
from tests.factories import CustomerFactory
from tests.fake_stripe import API_KEY as STRIPE_API_KEY
from tests.fake_stripe import FakeStripe
from tests.helpers import (
    ADMIN_TOKEN,
    MEASURED,
    PG_ADMIN_URL,
    REDIS_URL,
    SERVICE_TOKEN,
    WEBHOOK_SECRET,
    Receiver,
    close_enforcing,
    create_database,
    create_extra_app,
    drop_database,
    enforcing_app,
    execute_blueprint,
)
from tests.processes import RedisServer, free_port

REQUIRE_SERVICES = (
    os.environ.get("CI", "").lower() == "true" or os.environ.get("REQUIRE_SERVICES") == "1"
)


def _reachable(url: str) -> bool:
    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 0), timeout=1):
            return True
    except OSError:
        return False


SERVICES_UP = _reachable(PG_ADMIN_URL) and _reachable(REDIS_URL)
if REQUIRE_SERVICES and not SERVICES_UP:
    raise pytest.UsageError(
        f"CI requires PostgreSQL ({PG_ADMIN_URL}) and Redis ({REDIS_URL}); one is not reachable"
    )


SESSION_TABLES = {"model_prices", "installation"}  # seeded once (the catalogue, the migration)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if MEASURED:
        terminalreporter.section("measured by the fault, fuzz and race tests")
        for line in MEASURED:
            terminalreporter.write_line(line)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if SERVICES_UP:
        return
    skip = pytest.mark.skip(reason="needs PostgreSQL and Redis (not reachable here)")
    for item in items:
        if "services" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def fake_stripe() -> Iterator[FakeStripe]:
    server = FakeStripe().start()
    yield server
    server.stop()


@pytest.fixture()
def stripe_server(fake_stripe: FakeStripe) -> FakeStripe:
    fake_stripe.reset()
    return fake_stripe


@pytest.fixture(scope="session")
def settings(
    tmp_path_factory: pytest.TempPathFactory, fake_stripe: FakeStripe
) -> Iterator[Settings]:
    instance = tmp_path_factory.mktemp("instance")
    base = Settings(
        instance_dir=instance,
        service_token=SERVICE_TOKEN,
        admin_token=ADMIN_TOKEN,
        enable_pricing_middleware=True,
        meter_flush_ms=20,
        billing_portal_allowed_origins=("https://app.example.com",),
        stripe_api_key=STRIPE_API_KEY,
        stripe_api_base=fake_stripe.url,
        stripe_webhook_secret=WEBHOOK_SECRET,
        stripe_retry_base_ms=5,
        stripe_timeout_seconds=0.5,  # fake_stripe's "slow" answers after 1.5 s
        stripe_max_requests_per_second=1000,
        alert_allow_loopback=True,  # the tests' webhook receivers listen on 127.0.0.1
    )
    if not SERVICES_UP:
        yield base
        return
    import redis

    url = create_database()
    redis.Redis.from_url(REDIS_URL).flushdb()
    try:
        yield base.replace(database_url=url, redis_url=REDIS_URL)
    finally:
        drop_database(url)


@pytest.fixture(scope="session")
def app(settings: Settings) -> Iterator[Flask]:
    flask_app = create_app(settings)
    flask_app.register_blueprint(execute_blueprint())
    flask_app.config["TESTING"] = True
    yield flask_app
    services(flask_app).outbox.close()


@pytest.fixture(scope="session")
def celery_worker(app: Flask) -> Iterator[Any]:
    from celery.contrib.testing.worker import start_worker

    celery_app = app.extensions["celery"]
    with start_worker(
        celery_app, pool="solo", perform_ping_check=False, loglevel="WARNING", shutdown_timeout=30
    ) as worker:
        RUNNING_WORKERS.append(worker)
        try:
            yield worker
        finally:
            RUNNING_WORKERS.remove(worker)


RUNNING_WORKERS: list[Any] = []
"""The session's in-thread worker once a test started it (``clean_tables`` reaches it)."""


def _revoke_held_tasks(worker: Any) -> None:
    """Revoke what the in-thread worker holds for later: a retry's countdown, an ETA.

    Such a task was sent by the test that just ended and is no longer in the queue
    (the purge cannot reach it); it would run in a later test against rows with the
    same ids (a link retried for customer 1 links the next test's customer 1). A
    revoked request is acknowledged and dropped by the worker itself when it is due.
    """
    from celery.worker import state

    state.revoked.update(request.id for request in held_requests(worker))


def held_requests(worker: Any) -> list[Any]:
    """The task requests the worker's timer holds until they are due."""
    from celery.worker.request import Request

    return [
        arg
        for scheduled in worker.consumer.timer.queue
        for arg in scheduled.entry.args
        if isinstance(arg, Request)
    ]


def _truncate(names: list[str]) -> None:
    """TRUNCATE, again if it deadlocked with a batch the in-thread worker was still
    recording or settling for the test that just ended (PostgreSQL aborts one of the two;
    the worker retries its own)."""
    for attempt in range(5):
        try:
            db.session.execute(text(f"TRUNCATE {', '.join(names)} RESTART IDENTITY CASCADE"))
            return
        except OperationalError:
            db.session.rollback()
            if attempt == 4:
                raise
            time.sleep(0.2)


def _forget_unrecorded(app: Flask) -> None:
    """Drop the ended test's batches and tasks that are not done yet, with its tables.

    Otherwise they land in a later test: the session's outbox re-sends a batch whose
    receipt the truncation removed (180 s on), a message queued while no worker ran is
    taken by the session's worker whenever a later test starts it, and one the worker
    has not fetched yet (the filesystem broker polls each second) or holds for a retry
    runs in the next test, on rows that reuse the ended test's ids.
    """
    services(app).outbox.close()  # it restarts with the next metered call
    app.extensions["celery"].control.purge()
    for worker in RUNNING_WORKERS:
        _revoke_held_tasks(worker)
    for path in app.config["SETTINGS"].spool_dir.glob("*.jsonl"):
        path.unlink(missing_ok=True)


@pytest.fixture(autouse=True)
def clean_tables(app: Flask) -> Iterator[None]:
    yield
    _forget_unrecorded(app)
    with app.app_context():
        # Every table but the price catalogue the session seeded once, children first.
        tables = reversed(db.metadata.sorted_tables)
        names = [t.name for t in tables if t.name not in SESSION_TABLES]
        if db.engine.dialect.name == "postgresql":
            _truncate(names)
        else:
            for name in names:
                db.session.execute(text(f"DELETE FROM {name}"))
        db.session.commit()
        # As migration 0007 seeds it: a deployment always has the standard plan (made
        # again on first use only if someone deleted it; two pages' first calls at once
        # on SQLite then meet "database is locked").
        default_plan()
    if SERVICES_UP:  # budget ids restart with the tables: so must their counters (and
        # the operators' snapshot of top customers must not outlive its rows)
        import redis

        from app.budgets.counters import PREFIX
        from app.dashboard.overview import TOP_KEY

        client = redis.Redis.from_url(REDIS_URL)
        for key in client.scan_iter(PREFIX + "*"):
            client.delete(key)
        client.delete(TOP_KEY)


@pytest.fixture()
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture()
def make_customer(app: Flask) -> Callable[..., BillingCustomer]:
    """A committed customer with this raw key (hashed, as the service would store it)."""

    def make(api_key: str, **fields: Any) -> BillingCustomer:
        with app.app_context():
            customer = CustomerFactory(api_key=api_key, **fields)
            db.session.refresh(customer)  # loaded now: the test reads it after the session ends
            db.session.expunge(customer)
            return customer

    return make


@pytest.fixture()
def stack(
    app: Flask, settings: Settings, tmp_path: Path
) -> Iterator[tuple[Flask, RedisServer, Settings]]:
    """A private Redis (to break), the session's database, and an app producing into
    them: (producer, the Redis server, their settings) for ``shipped_worker``."""
    redis_server = RedisServer(free_port(), tmp_path)
    redis_server.start()
    local = settings.replace(
        redis_url=f"redis://127.0.0.1:{redis_server.port}/0",
        meter_spool_dir=str(tmp_path / "spool"),
        instance_dir=tmp_path,
        auto_migrate=False,
        # Re-send a published batch with no receipt after 5 s, not the default 180 s, so
        # a batch Redis handed to a killed worker is recovered within the test.
        meter_redeliver_after_seconds=5,
    )
    producer = create_extra_app(local, app)
    yield producer, redis_server, local
    services(producer).outbox.close()
    redis_server.stop()


@pytest.fixture(scope="module")
def sqlite_app(app: Flask, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Flask]:
    """The embedded default (a SQLite file of its own), one per test module."""
    embedded = create_extra_app(Settings(instance_dir=tmp_path_factory.mktemp("embedded")), app)
    assert embedded.config["SQLALCHEMY_DATABASE_URI"].startswith("sqlite:///")
    yield embedded
    with embedded.app_context():
        db.engine.dispose()


@pytest.fixture()
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    yield server
    server.server.shutdown()


@pytest.fixture()
def enforcing(app: Flask, settings: Settings, tmp_path: Path, celery_worker) -> Iterator[Flask]:
    """An API process enforcing budgets, credits and rate limits, as shipped (its
    leases on); every call it metered is recorded before the test ends.
    (tests/test_budgets.py has its own, run with and without leases.)"""
    extra = enforcing_app(app, settings, tmp_path / "spool")
    yield extra
    close_enforcing(extra)
