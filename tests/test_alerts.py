"""Budget alerts: one per (budget, threshold, period) whatever the batches, workers and
redeliveries; signed webhooks, retried while the receiver is down, every attempt kept;
addresses that could reach inside refused when set and again at delivery."""

from __future__ import annotations

import itertools
import json
import os
import signal
import textwrap
import threading
import time
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from prometheus_client import REGISTRY
from sqlalchemy import select
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from app.budgets.alerts import (
    STOPPED_AFTER_SENDING,
    STOPPED_BEFORE_SENDING,
    check_url,
    deliver_due,
    new_secret,
    signed_headers,
)
from app.budgets.models import AlertDelivery, BudgetAlert
from app.columns import utcnow
from app.config import Settings
from app.errors import ValidationError
from app.extensions import db
from app.periods import period_at
from app.registry import services
from tests.factories import event
from tests.helpers import (
    ADMIN_TOKEN,
    SERVICE_TOKEN,
    Receiver,
    auth,
    measured,
    project_root,
    subscribe,
    wait_for,
)

pytestmark = pytest.mark.services
EVENT_COST = "0.0045"  # claude-3-5-sonnet, 1,000 tokens in and 100 out: $3 and $15 per million


def _alerted(
    client: FlaskClient, make_customer: Any, key: str, url: str, **budget: Any
) -> tuple[Any, str]:
    """A customer whose alerts go to ``url``, with this budget: it, and its secret."""
    customer = make_customer(key)
    secret = subscribe(client, key, url)
    resp = client.post(
        f"/v1/billing/customers/{customer.id}/budgets",
        json={"period": "day", **budget},
        headers=auth(ADMIN_TOKEN),
    )
    assert resp.status_code == 201, resp.get_json()
    return customer, secret


def _spend(app: Flask, client: FlaskClient, events: list[dict]) -> None:
    """Send events through the ingest endpoint and on to the workers."""
    resp = client.post("/v1/usage/events", json={"events": events}, headers=auth(SERVICE_TOKEN))
    assert resp.status_code == 202
    services(app).outbox.flush()


def _outcomes(app: Flask) -> list[int | None]:
    """Every delivery attempt's answer so far, in order."""
    with app.app_context():
        codes = list(
            db.session.scalars(select(AlertDelivery.status_code).order_by(AlertDelivery.id))
        )
        db.session.rollback()
        return codes


def _alerts(app: Flask) -> list[BudgetAlert]:
    with app.app_context():
        rows = list(db.session.query(BudgetAlert).order_by(BudgetAlert.threshold))
        for row in rows:
            db.session.expunge(row)
        return rows


def test_crossing_thresholds_sends_exactly_one_signed_webhook_each(
    app: Flask, client: FlaskClient, celery_worker, make_customer, receiver: Receiver
) -> None:
    """$0.01 a month, alerts at 50 % and 80 %: three batches of one $0.0045 event (45 %,
    90 %, 135 %), the second one sent twice: one webhook for 50 %, one for 80 %."""
    _, secret = _alerted(
        client,
        make_customer,
        "key-alerted",
        receiver.url,
        metric="usd",
        period="month",
        limit="0.01",
        thresholds=[50, 80],
    )
    first, second, third = (event("key-alerted") for _ in range(3))
    for batch in ([first], [second], [second], [third]):
        _spend(app, client, batch)
    wait_for(lambda: len(receiver.requests) >= 2)
    with app.app_context():
        deliver_due(app.config["SETTINGS"])  # nothing is due twice
    alerts = _alerts(app)
    assert [(a.threshold, a.status) for a in alerts] == [(50, "delivered"), (80, "delivered")]
    assert sorted(receiver.ids()) == sorted(f"alert_{a.id}" for a in alerts)
    for request in receiver.requests:  # as a receiver checks it, with the stock library
        assert (
            Webhook(secret).verify(request["body"], request["headers"])["id"].startswith("alert_")
        )
        with pytest.raises(WebhookVerificationError):
            Webhook(new_secret()).verify(request["body"], request["headers"])
    payloads = sorted(
        (json.loads(r["body"]) for r in receiver.requests), key=lambda p: p["threshold_percent"]
    )
    assert [(p["threshold_percent"], p["limit"]) for p in payloads] == [(50, "0.01"), (80, "0.01")]
    assert payloads[1]["spent"] == "0.009"
    measured(
        f"alerts: 4 batches (one redelivered) crossing 50 % and 80 %: webhooks={len(receiver.requests)}"
    )


def test_a_receiver_down_for_a_while_gets_the_alert_once_later_and_every_attempt_is_kept(
    app: Flask, client: FlaskClient, celery_worker, make_customer, receiver: Receiver
) -> None:
    customer, _ = _alerted(
        client,
        make_customer,
        "key-patient",
        receiver.url,
        metric="usd",
        limit="0.004",
        thresholds=[100],
    )
    receiver.answers = [503, 503]
    before = {o: _deliveries(o) for o in ("delivered", "failed")}
    _spend(app, client, [event("key-patient")])
    wait_for(lambda: len(receiver.requests) == 1)
    now = utcnow()
    with app.app_context():
        settings = app.config["SETTINGS"]
        assert deliver_due(settings, now) == 0  # not due yet: it backs off
        deliver_due(settings, now + timedelta(minutes=2))
        deliver_due(settings, now + timedelta(minutes=10))
        deliver_due(settings, now + timedelta(hours=1))  # delivered: nothing left to send
    assert len(receiver.requests) == 3 and len(set(receiver.ids())) == 1
    seen = client.get("/v1/billing/alerts", headers=auth("key-patient")).get_json()["alerts"]
    [alert] = seen
    assert alert["status"] == "delivered"
    assert [a["status_code"] for a in alert["attempts"]] == [503, 503, 200]
    assert {o: _deliveries(o) - n for o, n in before.items()} == {"delivered": 1, "failed": 2}
    admin = client.get(f"/v1/billing/customers/{customer.id}/alerts", headers=auth(ADMIN_TOKEN))
    assert admin.get_json()["alerts"] == seen


def test_an_alert_is_abandoned_after_the_retry_window(
    app: Flask, client: FlaskClient, celery_worker, make_customer, receiver: Receiver
) -> None:
    _alerted(
        client,
        make_customer,
        "key-gone",
        receiver.url,
        metric="tokens",
        limit="100",
        thresholds=[100],
    )
    receiver.answers = [500] * 10
    _spend(app, client, [event("key-gone")])
    wait_for(lambda: _outcomes(app) == [500])  # the worker's attempt, over and recorded
    with app.app_context():
        deliver_due(app.config["SETTINGS"], utcnow() + timedelta(hours=25))
    [alert] = _alerts(app)
    assert alert.status == "abandoned" and alert.attempts == 2


@pytest.mark.parametrize(
    "url",
    [
        "http://example.com/hook",  # not https
        "https://10.1.2.3/hook",  # private
        "https://169.254.169.254/latest/meta-data",  # link-local: cloud metadata
        "https://[::1]/hook",  # loopback
        "https://user:pw@example.com/hook",  # credentials
        "ftp://example.com/hook",
        # loopback in the forms a resolver takes, refused when set, not only at delivery
        "https://localhost/x",
        "https://localhost./x",
        "https://api.localhost/x",
        "https://127.1/x",
        "https://2130706433/x",
        "https://0x7f.0.0.1/x",
        "https://0177.0.0.1/x",
        "https://10.1/x",  # 10.0.0.1
    ],
)
def test_webhook_urls_that_could_reach_inside_are_refused(url: str) -> None:
    production = Settings(alert_allow_loopback=False)
    with pytest.raises(ValidationError) as refused:
        check_url(url, production, resolve=False)
    assert refused.value.field == "url"


def test_loopback_receivers_only_with_the_development_setting(receiver: Receiver) -> None:
    assert check_url(receiver.url, Settings(alert_allow_loopback=True)) == ["127.0.0.1"]
    with pytest.raises(ValidationError):
        check_url(receiver.url, Settings(alert_allow_loopback=False))
    # A name is checked once resolved, at delivery; localhost is loopback by its name.
    assert check_url("https://example.com/hook", Settings(), resolve=False) == []
    with pytest.raises(ValidationError):
        check_url("https://localhost/hook", Settings(), resolve=False)


def test_a_name_that_resolves_inside_is_refused_at_delivery(
    app: Flask, client: FlaskClient, make_customer, receiver: Receiver
) -> None:
    """Set as https://localhost (it may resolve anywhere when set), refused when
    delivering: the attempt is recorded with the reason, nothing is sent."""
    customer = make_customer("key-sneaky")
    port = receiver.server.server_port
    subscribe(client, "key-sneaky", f"https://localhost:{port}/hook")
    with app.app_context():
        db.session.add(
            BudgetAlert(
                budget_id=_budget_id(client, customer.id),
                customer_id=customer.id,
                threshold=100,
                period_start=utcnow().date(),
                spent=1,
                limit_value=1,
                payload={},
            )
        )
        db.session.commit()
        deliver_due(app.config["SETTINGS"].replace(alert_allow_loopback=False))
    assert receiver.requests == []
    alerts = client.get("/v1/billing/alerts", headers=auth("key-sneaky")).get_json()["alerts"]
    assert "private or internal" in alerts[0]["attempts"][0]["error"]


def _budget_id(client: FlaskClient, customer_id: int) -> int:
    resp = client.post(
        f"/v1/billing/customers/{customer_id}/budgets",
        json={"metric": "tokens", "period": "day", "limit": "1"},
        headers=auth(ADMIN_TOKEN),
    )
    return resp.get_json()["id"]


@pytest.mark.parametrize("doc", ["README.md", "docs/budgets.md"])
def test_the_documented_verify_accepts_our_signature_and_nothing_else(doc: str) -> None:
    """The ``verify`` a customer copies from the docs checks what the workers sign,
    and refuses a changed body, another secret and a stale timestamp."""
    text = (project_root() / doc).read_text()
    lines = text[text.rindex("\n", 0, text.index("def verify(")) + 1 :].splitlines()
    indent = len(lines[0]) - len(lines[0].lstrip())
    body_lines = itertools.takewhile(lambda line: line.startswith(" " * (indent + 1)), lines[1:])
    block = textwrap.dedent("\n".join([lines[0], *body_lines]))
    assert "from standardwebhooks import Webhook" in text
    scope: dict[str, Any] = {"Webhook": Webhook}
    exec(block, scope)  # noqa: S102 - the docs' own snippet, on purpose
    secret, body, now = new_secret(), b'{"id": "alert_7", "threshold": 80}', utcnow()
    headers = signed_headers(secret, "alert_7", body, now)
    assert scope["verify"](secret, body, headers) == json.loads(body)
    refused = [
        (secret, body + b" ", headers),
        (new_secret(), body, headers),
        (secret, body, signed_headers(secret, "alert_7", body, now - timedelta(minutes=10))),
        (secret, body, {**headers, "Webhook-Id": "alert_8"}),
    ]
    for args in refused:
        with pytest.raises(WebhookVerificationError):
            scope["verify"](*args)


def test_several_workers_settling_at_once_raise_each_alert_once(
    app: Flask, client: FlaskClient, make_customer
) -> None:
    """Eight workers settle the same crossing at the same moment: one alert."""
    from app.budgets.spend import Estimates, settle_batch

    _alerted(
        client,
        make_customer,
        "key-raced",
        "https://hooks.example.com/budget",
        metric="tokens",
        limit="100",
        thresholds=[50, 100],
    )
    spent = event("key-raced")
    with app.app_context():
        from tests.helpers import record

        record([spent])
    barrier = threading.Barrier(8)
    raised: list[int] = []

    def settle() -> None:
        with app.app_context():
            barrier.wait()
            raised.extend(
                settle_batch(
                    services(app).budget_counters,
                    [spent],
                    utcnow(),
                    Estimates.from_settings(Settings()),
                )
            )
            db.session.remove()

    threads = [threading.Thread(target=settle) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(raised) == 2 and [a.threshold for a in _alerts(app)] == [50, 100]


@pytest.mark.slow
def test_a_worker_killed_mid_delivery_does_not_send_it_twice(
    app: Flask, stack, tmp_path, make_customer
) -> None:
    """``make worker`` (defaults) raises the alert and is SIGKILLed while the receiver
    holds its request, which arrived whole. After the attempt's lease a new worker
    finds the attempt sent without an outcome and does not send it again: the
    receiver got it once, and the alert says ``unconfirmed``."""
    from tests.processes import shipped_worker

    receiver = Receiver(hold_first_seconds=30)
    producer, _, local = stack
    client = producer.test_client()
    # The one setting given: the receiver listens on loopback, which production
    # refuses (test_loopback_receivers_only_with_the_development_setting).
    loopback = {"ALERT_ALLOW_LOOPBACK": "true"}

    try:
        _alerted(
            client,
            make_customer,
            "key-killed",
            receiver.url,
            metric="tokens",
            limit="100",
            thresholds=[100],
        )
        first = shipped_worker(local, tmp_path, **loopback)
        _spend(producer, client, [event("key-killed")])
        wait_for(receiver.arrived.is_set, timeout=60)  # the worker's request is held
        first.stop_worker(signal.SIGKILL)
        receiver.release.set()
        [alert] = _alerts(app)
        assert alert.status == "queued"
        second = shipped_worker(local, tmp_path, **loopback)
        try:
            # Beat runs the delivery each minute; here the test asks for it.
            wait_for(lambda: _settled_after_asking(producer, app), timeout=90, interval=1)
            time.sleep(2)  # a second send, were there one, would arrive meanwhile
        finally:
            second.stop_worker(signal.SIGKILL)
        [alert] = _alerts(app)
        attempts = client.get("/v1/billing/alerts", headers=auth("key-killed")).get_json()
        [attempt] = attempts["alerts"][0]["attempts"]
        measured(
            f"alert delivery with the worker SIGKILLed mid-request: alerts=1 "
            f"requests={len(receiver.requests)} status={alert.status}"
        )
        assert alert.status == "unconfirmed" and receiver.ids() == [f"alert_{alert.id}"]
        assert attempt["sent_at"] is not None and attempt["status_code"] is None
        assert attempt["error"] == STOPPED_AFTER_SENDING
    finally:
        receiver.server.shutdown()


# A delivery in a process of its own, killed at one side of the moment it commits
# to sending: before it (the request is written but its last byte) or after the
# whole request is written (before the answer is read).
_KILLED_DELIVERY = """
import os, signal, sys, http.client
from app import create_app
from app.budgets import alerts

def killed(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)

if sys.argv[1] == "before":
    alerts._committing = killed
else:
    http.client.HTTPConnection.getresponse = killed
app = create_app()
with app.app_context():
    alerts.deliver_due(app.config["SETTINGS"])
"""


@pytest.mark.parametrize("side", ["before", "after"])
def test_a_delivery_killed_either_side_of_its_commit_arrives_once(
    app: Flask, client: FlaskClient, make_customer, receiver: Receiver, side: str
) -> None:
    """Killed before its commit, the receiver holds a request cut short (and drops
    it), and the alert is sent again after the lease: once. Killed after the whole
    request went out, the receiver has it, and it is not sent again."""
    import subprocess
    import sys

    from app.budgets.alerts import raise_alerts
    from app.budgets.models import Budget

    _alerted(
        client,
        make_customer,
        f"key-{side}",
        receiver.url,
        metric="tokens",
        limit="100",
        thresholds=[100],
    )
    settings = app.config["SETTINGS"]
    with app.app_context():  # the alert raised; its delivery left to the child
        budget = db.session.query(Budget).one()
        raise_alerts(budget, period_at("day", utcnow(), 1), Decimal(100))
        db.session.commit()
    env = {
        **os.environ,
        "DATABASE_URL": settings.database_url,
        "REDIS_URL": settings.redis_url,
        "ALERT_ALLOW_LOOPBACK": "true",
        "AUTO_MIGRATE": "false",
        "INSTANCE_DIR": str(settings.instance_dir),
    }
    child = subprocess.run(
        [sys.executable, "-c", _KILLED_DELIVERY, side], env=env, timeout=120, check=False
    )
    assert child.returncode == -signal.SIGKILL
    [alert] = _alerts(app)
    if side == "before":
        wait_for(lambda: receiver.cut_short == 1)
        assert receiver.requests == []
    else:
        wait_for(lambda: len(receiver.requests) == 1)
    with app.app_context():  # after the attempt's lease, as the next worker would
        deliver_due(settings, utcnow() + timedelta(minutes=1))
        deliver_due(settings, utcnow() + timedelta(minutes=10))
    [alert] = _alerts(app)
    attempts = client.get("/v1/billing/alerts", headers=auth(f"key-{side}")).get_json()
    errors = [(a["status_code"], a["error"]) for a in attempts["alerts"][0]["attempts"]]
    assert receiver.ids() == [f"alert_{alert.id}"]
    if side == "before":
        assert alert.status == "delivered"
        assert errors == [(None, STOPPED_BEFORE_SENDING), (200, None)]
    else:
        assert alert.status == "unconfirmed"
        assert errors == [(None, STOPPED_AFTER_SENDING)]


def _settled_after_asking(producer: Flask, app: Flask) -> bool:
    """Ask the workers to deliver what is due (Beat does it each minute); settled yet?"""
    from app.budgets.alerts import DELIVER_TASK

    producer.extensions["celery"].send_task(DELIVER_TASK)
    return _alerts(app)[0].status != "queued"


def _deliveries(outcome: str) -> float:
    return REGISTRY.get_sample_value("ub_alert_deliveries_total", {"outcome": outcome}) or 0.0


def test_a_worker_slower_than_its_lease_sends_nothing(
    app: Flask, client: FlaskClient, make_customer, receiver: Receiver
) -> None:
    """A worker whose lease passed while it was stalled (another worker has taken the
    alert since) finds so when it commits to sending, and cuts its request short."""
    from app.budgets.alerts import _attempt, _claim, raise_alerts
    from app.budgets.models import Budget

    _alerted(
        client,
        make_customer,
        "key-slow",
        receiver.url,
        metric="tokens",
        limit="1",
        thresholds=[100],
    )
    settings = app.config["SETTINGS"]
    with app.app_context():
        raise_alerts(db.session.query(Budget).one(), period_at("day", utcnow()), Decimal(1))
        db.session.commit()
        now = utcnow()
        stalled = _claim(settings, now)
        taken_over = _claim(settings, now + timedelta(minutes=1))
        assert stalled is not None and taken_over is not None
        assert _attempt(*stalled, settings, now) == "queued"
        assert _attempt(*taken_over, settings, now) == "delivered"
    wait_for(lambda: receiver.cut_short == 1)
    [alert] = _alerts(app)
    assert receiver.ids() == [f"alert_{alert.id}"] and alert.attempts == 2


def test_https_goes_to_the_checked_address_under_the_urls_name(tmp_path) -> None:
    """TLS to the address that was checked, with the URL's host for SNI, the
    certificate's name and ``Host``; a certificate for another name is refused."""
    import ssl
    import subprocess
    from unittest import mock

    from app.budgets.alerts import _post

    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-keyout", str(tmp_path / "key.pem"), "-out", str(tmp_path / "cert.pem"),
         "-subj", "/CN=hooks.test", "-addext", "subjectAltName=DNS:hooks.test"],
        check=True, capture_output=True,
    )  # fmt: skip
    server = Receiver()
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")
    server.server.socket = context.wrap_socket(server.server.socket, server_side=True)
    port = server.server.server_port
    trusting = ssl.create_default_context(cafile=tmp_path / "cert.pem")  # our test CA only
    try:
        with mock.patch("ssl.create_default_context", return_value=trusting):
            status = _post(
                f"https://hooks.test:{port}/hook", ["127.0.0.1"], b"{}", {}, 5, lambda: True
            )
            assert status == 200 and server.requests[0]["headers"]["Host"] == f"hooks.test:{port}"
            with pytest.raises(ssl.SSLCertVerificationError):
                _post(f"https://other.test:{port}/hook", ["127.0.0.1"], b"{}", {}, 5, lambda: True)
        assert len(server.requests) == 1
    finally:
        server.server.shutdown()
