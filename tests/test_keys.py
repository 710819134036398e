"""A customer with many API keys: issued once, listed, revoked, rotated; usage, the report
and retention add up per customer; a migration keeps every existing key working."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, date, datetime, timedelta

import pytest
from flask import Flask
from flask.testing import FlaskClient
from flask_migrate import upgrade
from sqlalchemy import create_engine, select, text

from app.config import Settings
from app.customers.models import ApiKey
from app.database import MIGRATIONS_DIR
from app.extensions import db
from app.jobs.definitions import run_report
from tests.factories import event
from tests.fake_stripe import FakeStripe
from tests.helpers import (
    ADMIN_TOKEN,
    auth,
    create_database,
    create_extra_app,
    drop_database,
    issue_key,
    record,
)

YESTERDAY = datetime.now(UTC).date() - timedelta(days=1)


def _usage(client: FlaskClient, key: str, query: str = "") -> tuple[int, dict]:
    day = YESTERDAY.isoformat()
    resp = client.get(
        f"/v1/billing/usage?start_date={day}&end_date={day}{query}", headers=auth(key)
    )
    return resp.status_code, resp.get_json()


def _use(app: Flask, key: str, tokens: int, day: date = YESTERDAY) -> None:
    at = datetime(day.year, day.month, day.day, 12, tzinfo=UTC).isoformat()
    with app.app_context():
        assert (
            record([event(key, timestamp=at, tokens_input=tokens, tokens_output=0)]).inserted == 1
        )


def test_an_issued_key_is_shown_once_stored_as_its_hash_and_authenticates(
    app: Flask, client: FlaskClient, make_customer
) -> None:
    customer = make_customer("key-registered")
    issued = issue_key(client, customer.id, "ci deploys")
    raw = issued["key"]
    # 256 random bits after a recognisable prefix.
    assert raw.startswith("ubk_") and len(raw) == 4 + 43 and issued["prefix"] == raw[:12]
    listed = client.get(f"/v1/billing/customers/{customer.id}/keys", headers=auth(ADMIN_TOKEN))
    assert [(k["label"], k["prefix"]) for k in listed.get_json()["keys"]] == [
        ("registered", None),
        ("ci deploys", raw[:12]),
    ]
    assert raw not in listed.get_data(as_text=True) and "hash" not in listed.get_data(as_text=True)
    with app.app_context():
        stored = db.session.scalar(select(ApiKey).where(ApiKey.id == issued["id"]))
        assert stored.key_hash == hashlib.sha256(raw.encode()).hexdigest()
        row = db.session.execute(text("SELECT * FROM api_keys WHERE id = :id"), {"id": stored.id})
        assert raw not in json.dumps([str(value) for value in row.one()])
    assert _usage(client, raw)[0] == 200
    assert _usage(client, "key-registered")[0] == 200


def test_keys_issued_are_distinct() -> None:
    from app.customers.keys import KEY_PREFIX
    from app.customers.keys import secrets as key_secrets

    raws = {KEY_PREFIX + key_secrets.token_urlsafe(32) for _ in range(2000)}
    assert len(raws) == 2000


def test_a_revoked_key_gets_401_on_every_customer_endpoint_and_the_others_still_work(
    client: FlaskClient, stripe_server: FakeStripe, make_customer
) -> None:
    customer = make_customer("key-kept", stripe_customer_id=stripe_server.add_customer())
    leaked = issue_key(client, customer.id, "laptop")
    revoked = client.post(f"/v1/billing/keys/{leaked['id']}/revoke", headers=auth(ADMIN_TOKEN))
    assert revoked.status_code == 200 and revoked.get_json()["revoked_at"]
    portal = {"return_url": "https://app.example.com/"}
    for key in (leaked["key"],):
        assert _usage(client, key)[0] == 401
        resp = client.post("/v1/billing/portal", json=portal, headers=auth(key))
        assert resp.status_code == 401 and resp.get_json()["error"]["field"] == "Authorization"
    assert _usage(client, "key-kept")[0] == 200
    assert (
        client.post("/v1/billing/portal", json=portal, headers=auth("key-kept")).status_code == 200
    )


def test_rotation_issues_a_new_key_with_the_label_and_revokes_the_old_at_once(
    client: FlaskClient, make_customer
) -> None:
    customer = make_customer("key-first")
    old = issue_key(client, customer.id, "production")
    resp = client.post(f"/v1/billing/keys/{old['id']}/rotate", headers=auth(ADMIN_TOKEN))
    assert resp.status_code == 201
    new = resp.get_json()
    assert new["label"] == "production" and new["key"] != old["key"]
    assert _usage(client, old["key"])[0] == 401 and _usage(client, new["key"])[0] == 200
    again = client.post(f"/v1/billing/keys/{old['id']}/rotate", headers=auth(ADMIN_TOKEN))
    assert again.status_code == 409 and again.get_json()["error"]["field"] == "key_id"


@pytest.mark.parametrize(
    ("method", "path", "status", "field"),
    [
        ("post", "/v1/billing/keys/999999/revoke", 404, "key_id"),
        ("post", "/v1/billing/keys/abc/rotate", 404, "key_id"),
        ("post", "/v1/billing/keys/99999999999999999999/revoke", 404, "key_id"),
        ("get", "/v1/billing/customers/0/keys", 404, "customer_id"),
        ("get", "/v1/billing/customers/999999/keys", 404, "customer_id"),
    ],
)
def test_key_endpoints_refuse_what_does_not_exist_by_name(
    client: FlaskClient, method: str, path: str, status: int, field: str
) -> None:
    resp = getattr(client, method)(path, headers=auth(ADMIN_TOKEN))
    assert resp.status_code == status and resp.get_json()["error"]["field"] == field


def test_key_endpoints_are_for_admins_only(client: FlaskClient, make_customer) -> None:
    customer = make_customer("key-self")
    for token in ("key-self", "wrong"):
        resp = client.post(
            f"/v1/billing/customers/{customer.id}/keys", json={"label": "x"}, headers=auth(token)
        )
        assert resp.status_code == 403


def test_usage_adds_up_every_key_and_breaks_down_by_key_by_id_and_label(
    app: Flask, client: FlaskClient, make_customer
) -> None:
    customer = make_customer("key-one")
    second = issue_key(client, customer.id, "batch jobs")
    make_customer("key-other")
    _use(app, "key-one", 1000)
    _use(app, second["key"], 300)
    _use(app, "key-other", 50)
    status, body = _usage(client, second["key"])
    assert status == 200 and body["totals"]["tokens_input"] == 1300
    status, body = _usage(client, "key-one", "&group_by=key")
    [day] = body["periods"]
    by_label = {g["key"]["label"]: g["tokens_input"] for g in day["groups"]}
    assert by_label == {"registered": 1000, "batch jobs": 300}
    assert body["totals"]["tokens_input"] == 1300
    assert second["key"] not in json.dumps(body)
    status, body = _usage(client, "key-one", "&group_by=customer")
    assert status == 400 and body["error"]["field"] == "group_by"


def test_the_report_bills_all_of_a_customers_keys_once(
    app: Flask, client: FlaskClient, stripe_server: FakeStripe, make_customer
) -> None:
    customer = make_customer("key-main", stripe_customer_id=stripe_server.add_customer())
    extra = issue_key(client, customer.id, "extra")
    _use(app, "key-main", 600_000)
    _use(app, extra["key"], 400_000)
    client.post(f"/v1/billing/keys/{extra['id']}/revoke", headers=auth(ADMIN_TOKEN))
    with app.app_context():
        run_report(app.config["SETTINGS"], YESTERDAY)
        run_report(app.config["SETTINGS"], YESTERDAY)
    [meter_event] = stripe_server.state.meter_events
    assert meter_event["payload"]["stripe_customer_id"] == customer.stripe_customer_id
    # Tokens (the default quantity) of both keys, the revoked key's too, once.
    assert meter_event["payload"]["value"] == "1000000"


def test_key_commands_issue_list_revoke_and_rotate(app: Flask, make_customer) -> None:
    customer = make_customer("key-cli")
    runner = app.test_cli_runner()
    created = runner.invoke(
        args=["billing", "keys", "create", "--customer", str(customer.id), "--label", "cron"]
    )
    assert created.exit_code == 0, created.output
    issued = json.loads(created.stdout.splitlines()[0])
    assert issued["key"].startswith("ubk_")
    listed = runner.invoke(args=["billing", "keys", "list", "--customer", str(customer.id)])
    assert [json.loads(line)["label"] for line in listed.stdout.splitlines()] == [
        "registered",
        "cron",
    ]
    assert issued["key"] not in listed.output
    rotated = runner.invoke(args=["billing", "keys", "rotate", str(issued["id"])])
    new = json.loads(rotated.stdout.splitlines()[0])
    assert new["label"] == "cron" and new["key"] != issued["key"]
    revoked = runner.invoke(args=["billing", "keys", "revoke", str(new["id"])])
    assert json.loads(revoked.stdout)["revoked_at"]
    missing = runner.invoke(args=["billing", "keys", "revoke", "999999"])
    assert missing.exit_code != 0 and "no API key 999999" in missing.output


@pytest.mark.services
def test_the_migration_makes_each_existing_customer_key_its_first_key(
    app: Flask, settings: Settings
) -> None:
    """A deployment at revision 0004 upgraded to head: every customer's registered key
    works, as its first key."""
    url = create_database()
    try:
        old = create_extra_app(settings.replace(database_url=url, auto_migrate=False), app)
        with old.app_context():
            upgrade(directory=MIGRATIONS_DIR, revision="0004")
            engine = create_engine(old.config["SQLALCHEMY_DATABASE_URI"])
            with engine.begin() as conn:
                for n in range(3):
                    conn.execute(
                        text(
                            "INSERT INTO billing_customers (api_key_hash, email, name, "
                            "billing_interval, is_active, created_at, updated_at) VALUES "
                            "(:hash, 'm@example.com', 'M', 'month', true, now(), now())"
                        ),
                        {"hash": hashlib.sha256(f"old-key-{n}".encode()).hexdigest()},
                    )
            upgrade(directory=MIGRATIONS_DIR)
            keys = db.session.scalars(select(ApiKey).order_by(ApiKey.id)).all()
            assert [(k.key_hash, k.label, k.revoked_at) for k in keys] == [
                (hashlib.sha256(f"old-key-{n}".encode()).hexdigest(), "registered", None)
                for n in range(3)
            ]
            db.session.remove()
            engine.dispose()
        assert _usage(old.test_client(), "old-key-1")[0] == 200
        with old.app_context():
            db.session.remove()
            for engine in db.engines.values():
                engine.dispose()
    finally:
        drop_database(url)
