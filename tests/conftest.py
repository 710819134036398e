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
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from flask import Blueprint, Flask
from flask.testing import FlaskClient
from sqlalchemy import create_engine, text

from app import create_app
from app.config import Settings, with_driver
from app.customers.models import BillingCustomer
from app.extensions import db
from app.security import hash_api_key
from tests.fake_stripe import API_KEY as STRIPE_API_KEY
from tests.fake_stripe import FakeStripe

PG_ADMIN_URL = os.environ.get(
    "TEST_DATABASE_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/11")
REQUIRE_SERVICES = (
    os.environ.get("CI", "").lower() == "true" or os.environ.get("REQUIRE_SERVICES") == "1"
)
SERVICE_TOKEN = "svc-" + uuid.uuid4().hex
ADMIN_TOKEN = "adm-" + uuid.uuid4().hex
WEBHOOK_SECRET = "whsec_" + uuid.uuid4().hex

EXECUTE_RESPONSE = {
    "execution_id": None,  # set per request
    "task_type": "code_generation",
    "status": "success",
    "provider": "openai",
    "model": "gpt-4o-2024-08-06",
    "usage": {"input_tokens": 1000, "output_tokens": 500, "cache_read_input_tokens": 200},
    "execution_time": 1.25,
}


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


MEASURED: list[str] = []
SESSION_TABLES = {"model_prices"}  # seeded once per session, kept between tests


def measured(line: str) -> None:
    """A figure a test measured (events sent/stored/lost, requests fuzzed): shown at the end."""
    MEASURED.append(line)
    print(line)


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


def create_database() -> str:
    """A fresh, empty PostgreSQL database; returns its URL."""
    name = f"ub_test_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    admin = create_engine(with_driver(PG_ADMIN_URL), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + name


def drop_database(url: str) -> None:
    name = url.rsplit("/", 1)[1]
    admin = create_engine(with_driver(PG_ADMIN_URL), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


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


def _execute_blueprint() -> Blueprint:
    bp = Blueprint("test_execute", __name__)

    @bp.post("/v1/execute/<task>")
    def execute(task: str) -> dict[str, Any]:
        return {**EXECUTE_RESPONSE, "execution_id": uuid.uuid4().hex, "task_type": task}

    return bp


@pytest.fixture(scope="session")
def app(settings: Settings) -> Iterator[Flask]:
    flask_app = create_app(settings)
    flask_app.register_blueprint(_execute_blueprint())
    flask_app.config["TESTING"] = True
    yield flask_app
    flask_app.extensions["usage_outbox"].close()


def create_extra_app(settings: Settings, session_app: Flask) -> Flask:
    """Another app in this process (a producer, the embedded default).

    A new Celery app makes itself the current one (and ``create_app`` the
    default, as Flask's Celery pattern does); tasks run by the session's
    in-thread worker or called directly go to the current app, so the
    session app's is made current and default again.
    """
    extra = create_app(settings)
    session_celery = session_app.extensions["celery"]
    session_celery.set_default()
    session_celery.set_current()
    return extra


@pytest.fixture(scope="session")
def celery_worker(app: Flask) -> Iterator[Any]:
    from celery.contrib.testing.worker import start_worker

    celery_app = app.extensions["celery"]
    with start_worker(
        celery_app, pool="solo", perform_ping_check=False, loglevel="WARNING", shutdown_timeout=30
    ) as worker:
        yield worker


@pytest.fixture(autouse=True)
def clean_tables(app: Flask) -> Iterator[None]:
    yield
    with app.app_context():
        # Every table but the price catalogue the session seeded once, children first.
        tables = reversed(db.metadata.sorted_tables)
        names = [t.name for t in tables if t.name not in SESSION_TABLES]
        if db.engine.dialect.name == "postgresql":
            db.session.execute(text(f"TRUNCATE {', '.join(names)} RESTART IDENTITY CASCADE"))
        else:
            for name in names:
                db.session.execute(text(f"DELETE FROM {name}"))
        db.session.commit()


@pytest.fixture()
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture()
def make_customer(app: Flask) -> Callable[..., BillingCustomer]:
    def make(api_key: str, stripe_customer_id: str | None = None, **fields: Any) -> BillingCustomer:
        with app.app_context():
            customer = BillingCustomer(
                api_key_hash=hash_api_key(api_key),
                stripe_customer_id=stripe_customer_id,
                email=fields.pop("email", f"{uuid.uuid4().hex[:8]}@example.com"),
                name=fields.pop("name", "Test Customer"),
                **fields,
            )
            db.session.add(customer)
            db.session.commit()
            db.session.refresh(customer)
            db.session.expunge(customer)
            return customer

    return make


def wait_for(predicate: Callable[[], Any], timeout: float = 20.0, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s (last value {value!r})")
        time.sleep(interval)


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def project_root() -> Path:
    return Path(__file__).resolve().parent.parent
