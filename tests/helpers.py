"""What the tests share besides fixtures: tokens, waiting, reading the ledger, other apps.

Fixtures live in ``conftest.py``; test data is built by ``tests/factories.py``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from flask import Blueprint, Flask, current_app
from flask.testing import FlaskClient
from flask_migrate import upgrade
from sqlalchemy import create_engine, func, select, text

from app import create_app
from app.config import Settings, with_driver
from app.database import MIGRATIONS_DIR
from app.extensions import db
from app.ingest.models import RejectedEvent, UsageEvent
from app.ingest.recording import RecordResult, record_events
from app.ingest.validation import EventLimits
from app.registry import services
from tests.factories import ExecuteResponseFactory

PG_ADMIN_URL = os.environ.get(
    "TEST_DATABASE_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/11")
SERVICE_TOKEN = "svc-" + uuid.uuid4().hex
ADMIN_TOKEN = "adm-" + uuid.uuid4().hex
WEBHOOK_SECRET = "whsec_" + uuid.uuid4().hex

MEASURED: list[str] = []


def measured(line: str) -> None:
    """A figure a test measured (events sent/stored/lost, requests fuzzed): shown at the end."""
    MEASURED.append(line)
    print(line)


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def project_root() -> Path:
    return Path(__file__).resolve().parent.parent


def wait_for(predicate: Callable[[], Any], timeout: float = 20.0, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s (last value {value!r})")
        time.sleep(interval)


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


def execute_blueprint() -> Blueprint:
    """A stand-in for the metered API: ``/v1/execute/<task>`` answers with usage."""
    bp = Blueprint("test_execute", __name__)

    @bp.post("/v1/execute/<task>")
    def execute(task: str) -> dict[str, Any]:
        return ExecuteResponseFactory(task_type=task)

    return bp


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


@contextmanager
def deployment_at(revision: str, settings: Settings, session_app: Flask) -> Iterator[Flask]:
    """An app on a database of its own migrated to ``revision``: a deployment of an
    earlier release, for a migration to be tried on; the database goes afterwards."""
    url = create_database()
    old = create_extra_app(settings.replace(database_url=url, auto_migrate=False), session_app)
    with old.app_context():
        upgrade(directory=MIGRATIONS_DIR, revision=revision)
    try:
        yield old
    finally:
        with old.app_context():
            db.session.remove()
            for engine in db.engines.values():
                engine.dispose()
        drop_database(url)


def tokens(tokens_input: int, tokens_output: int = 0, cached: int = 0) -> dict[str, int]:
    """A call's usage by the price source's usage keys, as the price book takes it."""
    return {
        "input_tokens": tokens_input,
        "output_tokens": tokens_output,
        "cache_read_tokens": cached,
    }


def record(events: list[Any], **options: Any) -> RecordResult:
    """``record_events`` as the worker calls it, with the current app's limits."""
    limits = EventLimits.from_settings(current_app.config["SETTINGS"])
    return record_events(events, limits, **options)


def count_events(app: Flask, event_ids: list[str] | None = None, **where: Any) -> int:
    """Stored events matching ``where`` (and among ``event_ids``, when given: a test
    that counts only its own is not moved by an earlier test's late batch)."""
    with app.app_context():
        stmt = select(func.count()).select_from(UsageEvent)
        if event_ids is not None:
            stmt = stmt.where(UsageEvent.event_id.in_(event_ids))
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


def issue_key(client: FlaskClient, customer_id: int, label: str = "issued") -> dict[str, Any]:
    """A new key of the customer through the admin endpoint: its description and ``key``."""
    resp = client.post(
        f"/v1/billing/customers/{customer_id}/keys",
        json={"label": label},
        headers=auth(ADMIN_TOKEN),
    )
    assert resp.status_code == 201, resp.get_json()
    return resp.get_json()


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def metric_samples(text: str) -> Samples:
    """A Prometheus exposition as (name, sorted labels) → value."""
    from prometheus_client.parser import text_string_to_metric_families

    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def scrape(port: int) -> Samples:
    """The metrics a process serves on ``port`` (an API's, a worker's)."""
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    conn.request("GET", "/metrics")
    return metric_samples(conn.getresponse().read().decode())


def stripe_signed(payload: bytes, secret: str | None = None, at: int | None = None) -> str:
    """``Stripe-Signature`` as Stripe signs a webhook: ``t=…,v1=<hex HMAC of "t.payload">``."""
    at = at or int(time.time())
    key = (secret or WEBHOOK_SECRET).encode()
    signature = hmac.new(key, f"{at}.".encode() + payload, hashlib.sha256).hexdigest()
    return f"t={at},v1={signature}"


def stripe_event(
    client: FlaskClient, event_type: str, obj: dict[str, Any], event_id: str | None = None
) -> Any:
    """Deliver one signed Stripe event to the webhook endpoint: its response."""
    body = {
        "id": event_id or f"evt_{uuid.uuid4().hex[:20]}",
        "type": event_type,
        "created": int(time.time()),
        "data": {"object": obj},
    }
    payload = json.dumps(body).encode()
    headers = {"Content-Type": "application/json", "Stripe-Signature": stripe_signed(payload)}
    return client.post("/v1/billing/webhooks/stripe", data=payload, headers=headers)


def enforcing_app(session_app: Flask, settings: Settings, spool: Path, **changes: Any) -> Flask:
    """An API process enforcing budgets, credits and rate limits, with the stand-in
    ``/v1/execute``."""
    extra = create_extra_app(
        settings.replace(enforce_budgets=True, meter_spool_dir=str(spool), **changes), session_app
    )
    extra.register_blueprint(execute_blueprint())
    extra.config["TESTING"] = True
    return extra


def close_enforcing(extra: Flask, drain: bool = True) -> None:
    """An enforcing app a test is done with: every call it metered recorded first
    (``drain``), its outbox closed, its leases' thread ended."""
    outbox = services(extra).outbox
    if drain:
        outbox.flush()
        wait_for(lambda: outbox.backlog()[0] == 0, timeout=30)
    outbox.close()
    if services(extra).budget_leases is not None:
        services(extra).budget_leases.stop()


def metered_call(client: FlaskClient, key: str, body: dict[str, Any] | None = None) -> Any:
    """One call of the stand-in ``/v1/execute`` with ``key``."""
    return client.post(
        "/v1/execute/code_generation", json=body or {"prompt": "x"}, headers=auth(key)
    )


def together(n: int, action: Callable[[int], Any]) -> list[Any]:
    """``action(i)`` in ``n`` threads, released at once by a barrier: their results,
    in the order they finished."""
    barrier = threading.Barrier(n)
    results: list[Any] = []

    def run(i: int) -> None:
        barrier.wait()
        results.append(action(i))

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def at_once(app: Flask, key: str, n: int = 64, body: dict[str, Any] | None = None) -> list[Any]:
    """``n`` metered calls of ``key`` released together, each on its own client."""
    clients = [app.test_client() for _ in range(n)]
    return together(n, lambda i: metered_call(clients[i], key, body))


class Receiver:
    """A customer's webhook endpoint on loopback: answers from a script, keeps every request."""

    def __init__(self, hold_first_seconds: float = 0) -> None:
        self.requests: list[dict[str, Any]] = []
        self.cut_short = 0  # requests whose body never came whole: not acted on
        self.answers: list[int] = []  # answered in turn; 200 once they run out
        self.arrived, self.release = threading.Event(), threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - the http.server hook
                length = int(self.headers["Content-Length"])
                body = self.rfile.read(length)
                if len(body) < length:  # the sender went away: as any server, drop it
                    receiver.cut_short += 1
                    self.close_connection = True
                    return
                receiver.requests.append({"headers": dict(self.headers), "body": body})
                receiver.arrived.set()
                if len(receiver.requests) == 1:  # a slow endpoint holds the first one
                    receiver.release.wait(hold_first_seconds)
                status = receiver.answers.pop(0) if receiver.answers else 200
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_port}/hooks/budget"

    def ids(self) -> list[str]:
        return [r["headers"]["Webhook-Id"] for r in self.requests]


def subscribe(client: FlaskClient, key: str, url: str) -> str:
    """Send the customer's alerts to ``url``: the signing secret."""
    resp = client.put("/v1/billing/alerts/webhook", json={"url": url}, headers=auth(key))
    assert resp.status_code == 200, resp.get_json()
    return resp.get_json()["secret"]
