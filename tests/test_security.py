"""Keys are never stored or logged; no one reads another's data; tokens guard the doors."""

from __future__ import annotations

import logging

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import inspect, text

from app.extensions import db
from app.ingest import wire
from app.ingest.wire import dumps
from app.registry import services
from app.security import hash_api_key
from tests.factories import event
from tests.fake_stripe import FakeStripe
from tests.helpers import ADMIN_TOKEN, SERVICE_TOKEN, auth, count_events, wait_for

RAW_KEY = "sk-live-NEVER-LOG-ME-4f9c2e7a1b"
OTHER_KEY = "sk-live-other-customer-8d1e"


class _Everything(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(logging.Formatter("%(name)s %(message)s %(exc_text)s").format(record))
        self.lines.append(repr(record.__dict__))


@pytest.fixture()
def all_logs() -> _Everything:
    handler = _Everything()
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    yield handler
    root.removeHandler(handler)
    root.setLevel(old_level)


def _dump_database(app: Flask) -> str:
    with app.app_context():
        chunks = []
        for table in inspect(db.engine).get_table_names():
            rows = db.session.execute(text(f"SELECT * FROM {table}")).all()
            chunks.append(repr(rows))
        db.session.rollback()
        return "\n".join(chunks)


def test_raw_api_key_is_in_no_log_line_row_or_spool_file(
    app: Flask,
    client: FlaskClient,
    stripe_server: FakeStripe,
    celery_worker,
    all_logs: _Everything,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Every spool line (and batch) passes through wire.dumps; the outbox's thread renames and
    # deletes segments as it goes, so reading the directory afterwards races it. Keep every
    # encoded line instead: exactly the bytes written.
    encoded: list[bytes] = []

    def keep(value: object) -> bytes:
        encoded.append(dumps(value))
        return encoded[-1]

    monkeypatch.setattr(wire, "dumps", keep)
    # Onboard through both doors, meter calls, read usage, open the portal, and fail a few times.
    resp = client.post(
        "/v1/billing/customers",
        headers=auth(ADMIN_TOKEN),
        json={"email": "s@example.com", "name": "Sec", "api_key": RAW_KEY},
    )
    assert resp.status_code == 201
    cli = app.test_cli_runner().invoke(
        args=[
            "billing",
            "customers",
            "create",
            "--email",
            "o@example.com",
            "--name",
            "Other",
            "--api-key",
            OTHER_KEY,
        ]
    )
    assert cli.exit_code == 0 and OTHER_KEY not in cli.output
    for _ in range(3):
        assert (
            client.post("/v1/execute/code_generation", json={}, headers=auth(RAW_KEY)).status_code
            == 200
        )
    client.post("/v1/execute/code_generation", data=b"{bad", headers=auth(RAW_KEY))
    client.get("/v1/billing/usage?start_date=2026-01-01&end_date=2026-01-02", headers=auth(RAW_KEY))
    client.get("/v1/billing/usage?start_date=bad", headers=auth(RAW_KEY))
    client.post(
        "/v1/billing/portal", json={"return_url": "https://app.example.com/"}, headers=auth(RAW_KEY)
    )
    client.post(
        "/v1/billing/portal", json={"return_url": "https://evil.example/"}, headers=auth(RAW_KEY)
    )
    client.post("/v1/usage/events", json={"events": [event(RAW_KEY)]}, headers=auth(RAW_KEY))
    stripe_server.fail_next("/v1/billing_portal/sessions", 400)
    client.post(
        "/v1/billing/portal", json={"return_url": "https://app.example.com/"}, headers=auth(RAW_KEY)
    )
    services(app).outbox.flush()
    wait_for(lambda: count_events(app, api_key_hash=hash_api_key(RAW_KEY)) == 4)  # 4 metered calls

    assert len(all_logs.lines) > 10
    spooled = b"\n".join(encoded).decode()
    assert hash_api_key(RAW_KEY) in spooled  # the spool was written, and seen here
    for secret in (RAW_KEY, OTHER_KEY):
        assert not [line for line in all_logs.lines if secret in line]
        assert secret not in _dump_database(app)
        assert secret not in spooled
        assert all(secret not in repr(r.params) for r in stripe_server.state.requests)
    assert hash_api_key(RAW_KEY) in _dump_database(app)


def test_key_a_cannot_open_key_b_portal_or_read_b_usage(
    client: FlaskClient, stripe_server: FakeStripe, make_customer
) -> None:
    make_customer("key-a", stripe_customer_id=stripe_server.add_customer())
    customer_b = make_customer("key-b", stripe_customer_id=stripe_server.add_customer())
    resp = client.post(
        "/v1/billing/portal", json={"return_url": "https://app.example.com/"}, headers=auth("key-a")
    )
    assert resp.status_code == 200
    assert all(
        s["customer"] != customer_b.stripe_customer_id for s in stripe_server.state.portal_sessions
    )
    # There is no parameter by which a caller could name another customer.
    resp = client.get(
        "/v1/billing/usage?start_date=2026-01-01&end_date=2026-01-02"
        f"&api_key_hash={customer_b.api_key_hash}&customer_id={customer_b.id}",
        headers=auth("key-a"),
    )
    # Unknown parameters are refused by name, never read.
    assert resp.status_code == 400 and resp.get_json()["error"]["field"] == "api_key_hash"


@pytest.mark.parametrize(
    ("path", "token"),
    [
        ("/v1/usage/events", None),
        ("/v1/usage/events", ADMIN_TOKEN),
        ("/v1/usage/events", "Bearer"),
        ("/v1/billing/customers", None),
        ("/v1/billing/customers", SERVICE_TOKEN),
    ],
)
def test_service_and_admin_endpoints_refuse_the_wrong_token(
    client: FlaskClient, path: str, token: str | None
) -> None:
    headers = auth(token) if token else {}
    resp = client.post(
        path,
        json={"events": [event()], "email": "x@example.com", "name": "x", "api_key": "k"},
        headers=headers,
    )
    assert resp.status_code in (401, 403)
    assert resp.get_json()["error"]["field"] == "Authorization"


def test_an_unset_token_locks_the_endpoint(app: Flask, client: FlaskClient, monkeypatch) -> None:
    monkeypatch.setitem(app.config, "SETTINGS", app.config["SETTINGS"].replace(service_token=""))
    resp = client.post("/v1/usage/events", json={"events": [event()]}, headers=auth(""))
    assert resp.status_code == 401
    resp = client.post(
        "/v1/usage/events", json={"events": [event()]}, headers={"Authorization": "Bearer x"}
    )
    assert resp.status_code == 403


def test_the_settings_print_no_secret() -> None:
    """A traceback or a debug log that prints the settings shows that a secret is set,
    never the secret."""
    from pydantic import SecretStr

    from app.config import Settings

    names = [name for name, field in Settings.model_fields.items() if field.annotation is SecretStr]
    assert {"admin_token", "service_token", "stripe_api_key", "secret_key"} <= set(names)
    secrets = {name: f"secret-{name}-value" for name in names}
    urls = {
        "database_url": "postgresql://billing:pg-password@db:5432/billing",
        "redis_url": "redis://:redis-password@cache:6379/0",
    }
    shown = repr(Settings(**secrets, **urls))
    assert not [name for name, value in secrets.items() if value in shown]
    assert "pg-password" not in shown and "redis-password" not in shown
    assert "postgresql://billing:***@db:5432/billing" in shown
    assert "admin_token=SecretStr('**********')" in shown
    assert not [value for value in secrets.values() if value in str(Settings(**secrets))]
    assert "admin_token=SecretStr('')" in repr(Settings())  # unset, it says so
