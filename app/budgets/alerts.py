"""Budget alerts: raised once per (budget, threshold, period), delivered as signed webhooks.

Raising is exactly once: ``budget_alerts`` is unique on (budget, threshold,
period), and every worker that sees the threshold crossed inserts with ON
CONFLICT DO NOTHING; only the insert that created the row delivers it.

Delivery: a due alert is claimed under a row lock (``FOR UPDATE SKIP LOCKED``):
the attempt is recorded and the alert leased for one attempt's length before
anything is sent, so two workers never send it at once. The request is written
but for its last byte; the attempt's ``sent_at`` is committed (only while the
lease is still this attempt's); then the last byte goes. A receiver does not act
on a request cut short, so a worker killed before that commit sent nothing (the
alert is sent again after the lease), and one killed after it sent the request
whole (the alert is not sent again: ``unconfirmed``). Our own failures therefore
never make a receiver see an alert twice. A receiver that answers an error, or
nothing within ``ALERT_TIMEOUT_SECONDS``, has not acknowledged it: it is retried
with backoff, with the same ``Webhook-Id``, until ``ALERT_RETRY_HOURS`` after the
alert, then abandoned. Every attempt and its outcome stays in ``alert_deliveries``.

Signature: the Standard Webhooks specification's (``Webhook-Id``,
``Webhook-Timestamp``, ``Webhook-Signature: v1,<base64>``), with the customer's
secret, made by the ``standardwebhooks`` library; a receiver verifies it with the
same library in its own language, which refuses a timestamp five minutes off.

Addresses: a webhook URL must be https (http only on a loopback address, and only
with ``ALERT_ALLOW_LOOPBACK`` for development) and must not name a private,
loopback, link-local or otherwise internal address. It is checked when set and
again at each delivery, after resolving the name: the request goes to the address
that was checked, so a DNS answer that changes in between cannot redirect it.
"""

from __future__ import annotations

import base64
import http.client
import ipaddress
import json
import logging
import random
import secrets
import socket
import ssl
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta
from decimal import Decimal
from functools import partial
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import select, update
from standardwebhooks import Webhook

from app.budgets.models import (
    ABANDONED,
    DELIVERED,
    NO_WEBHOOK,
    QUEUED,
    UNCONFIRMED,
    AlertDelivery,
    Budget,
    BudgetAlert,
)
from app.columns import amount_str, utcnow
from app.config import Settings
from app.credits.notices import Notice
from app.customers.models import BillingCustomer
from app.database import execute_dml
from app.dialect import insert_for
from app.errors import ValidationError
from app.extensions import db
from app.observability.metrics import ALERT_DELIVERIES
from app.periods import Period

log = logging.getLogger("usage_billing.alerts")
DELIVER_TASK = "alerts.deliver_due"  # every minute, and after a batch raised alerts


# -- raising ------------------------------------------------------------------


def raise_alerts(budget: Budget, period: Period, spent: Decimal) -> list[int]:
    """Record each threshold of ``budget`` that ``spent`` reached this period, once.

    Returns the ids of the alerts this call created (none when another worker, or
    an earlier batch, had already raised them). The caller commits.
    """
    limit = budget.effective_limit
    created = []
    for threshold in sorted(budget.thresholds or []):
        if limit <= 0 or spent * 100 < limit * threshold:
            continue
        payload = {
            "type": "budget.threshold_reached",
            "budget_id": budget.id,
            "customer_id": budget.customer_id,
            "api_key_id": budget.api_key_id,
            "metric": budget.metric,
            "period": budget.period,
            "period_start": period.start.isoformat(),
            "period_end": period.ends_at.isoformat(),
            "threshold_percent": threshold,
            "limit": amount_str(limit),
            "spent": amount_str(spent),
            "hard_limit": budget.hard_limit,
        }
        alert_id = _queue(
            budget_id=budget.id,
            customer_id=budget.customer_id,
            threshold=threshold,
            period_start=period.start,
            spent=spent,
            limit_value=limit,
            payload=payload,
        )
        if alert_id is not None:
            created.append(alert_id)
    return created


def _queue(**values: Any) -> int | None:
    """Insert one alert, to be delivered now: its id, or None if it was raised before."""
    now = utcnow()
    row = db.session.execute(
        insert_for(BudgetAlert.__table__)
        .values(status=QUEUED, attempts=0, next_attempt_at=now, created_at=now, **values)
        .on_conflict_do_nothing()
        .returning(BudgetAlert.__table__.c.id)
    ).first()
    return None if row is None else int(row[0])


def queue_notices(notices: Iterable[Notice], now: datetime) -> list[int]:
    """Deliver prepaid customers' notices (low balance, expiring credit, a failed
    recharge), each already claimed once by its flag, as alerts: the same signed
    webhooks, retries and record of attempts. The caller commits."""
    created = []
    for notice in notices:
        alert_id = _queue(
            budget_id=None,
            customer_id=notice.customer_id,
            threshold=0,
            period_start=now.date(),
            spent=notice.amount,
            limit_value=notice.limit,
            payload=notice.payload(),
        )
        assert alert_id is not None  # no budget: nothing to conflict with
        created.append(alert_id)
    return created


# -- addresses ----------------------------------------------------------------


def _public(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    return ip.is_global and not ip.is_multicast


def _loopback(address: str) -> bool:
    return ipaddress.ip_address(address).is_loopback


def _literal(host: str) -> list[str]:
    """The address a host written as an address stands for, in any form a resolver takes:
    ``127.1``, ``2130706433`` and ``0x7f.0.0.1`` are 127.0.0.1 to ``inet_aton``."""
    try:
        return [str(ipaddress.ip_address(host))]
    except ValueError:
        pass
    try:
        return [socket.inet_ntoa(socket.inet_aton(host))]
    except OSError:
        return []


def check_url(url: str, settings: Settings, resolve: bool = True) -> list[str]:
    """The addresses ``url`` may be delivered to, or a ValidationError naming ``url``.

    https to a public address; http or a loopback address only with
    ``ALERT_ALLOW_LOOPBACK``, and then only loopback. Without ``resolve`` (when
    a URL is set and its name may not resolve yet) only literal addresses are checked.
    """
    parts = urlsplit(url)
    if parts.scheme not in {"https", "http"} or not parts.hostname:
        raise ValidationError("url must be an absolute https URL", field="url")
    if parts.username or parts.password:
        raise ValidationError("url must not carry credentials", field="url")
    host = parts.hostname.rstrip(".")
    if host == "localhost" or host.endswith(".localhost"):  # names that mean loopback
        addresses = ["127.0.0.1"]
    else:
        addresses = _literal(host)
    if not addresses:
        if not resolve:
            if parts.scheme != "https":
                raise ValidationError("url must be https", field="url")
            return []
        try:
            infos = socket.getaddrinfo(host, parts.port or 443, type=socket.SOCK_STREAM)
        except OSError as exc:
            raise ValidationError(f"url's host does not resolve: {exc}", field="url") from exc
        addresses = sorted({str(info[4][0]) for info in infos})
    loopback = settings.alert_allow_loopback and all(_loopback(a) for a in addresses)
    if not loopback and parts.scheme != "https":
        raise ValidationError("url must be https", field="url")
    if not loopback and not all(_public(a) for a in addresses):
        raise ValidationError("url must not point at a private or internal address", field="url")
    return addresses


# -- signing ------------------------------------------------------------------


def new_secret() -> str:
    """A signing secret as Standard Webhooks writes one: ``whsec_`` and 32 random bytes
    in base64, which every stock verifier decodes."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def signed_headers(secret: str, message_id: str, body: bytes, now: datetime) -> dict[str, str]:
    """``Webhook-Id``, ``Webhook-Timestamp`` and ``Webhook-Signature`` as the Standard
    Webhooks specification has them (``v1,<base64 HMAC-SHA256 of "id.timestamp.body">``),
    signed by its own library, so any of its verifiers accepts them."""
    signature = Webhook(secret).sign(message_id, now, body.decode())
    return {
        "Webhook-Id": message_id,
        "Webhook-Timestamp": str(int(now.timestamp())),
        "Webhook-Signature": signature,
    }


# -- delivering ---------------------------------------------------------------


def _connect(url: str, addresses: list[str], timeout: float) -> http.client.HTTPConnection:
    """A connection to the first checked address that answers, naming the host for TLS."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    last: OSError | None = None
    for address in addresses:
        try:
            sock = socket.create_connection((address, port), timeout)
        except OSError as exc:
            last = exc
            continue
        if parts.scheme == "https":
            try:
                sock = ssl.create_default_context().wrap_socket(sock, server_hostname=host)
            except OSError:  # a certificate that is not the host's, among others
                sock.close()
                raise
        conn = http.client.HTTPConnection(address, port, timeout=timeout)
        conn.sock = sock  # connected here, to the address that was checked
        return conn
    raise ConnectionError(str(last))


def _post(
    url: str,
    addresses: list[str],
    body: bytes,
    headers: dict[str, str],
    timeout: float,
    committing: Callable[[], bool],
) -> int:
    """POST ``body``; its answer's status.

    The request is written but for its last byte, then ``committing`` records that
    it goes out (False: another worker has the alert now, and nothing goes out).
    A receiver never acts on a request whose body is short, so a worker that stops
    before that record has sent nothing, and one that stops after it has sent it whole.
    """
    parts = urlsplit(url)
    conn = _connect(url, addresses, timeout)
    try:
        conn.putrequest(
            "POST",
            (parts.path or "/") + (f"?{parts.query}" if parts.query else ""),
            skip_host=True,
            skip_accept_encoding=True,
        )
        for name, value in {
            **headers,
            "Host": parts.netloc,
            "Content-Length": str(len(body)),
        }.items():
            conn.putheader(name, value)
        conn.endheaders(body[:-1])
        if not committing():
            raise ConnectionError("the alert's lease passed to another worker; not sent")
        conn.send(body[-1:])
        response = conn.getresponse()
        response.read()
        return response.status
    except http.client.HTTPException as exc:
        raise ConnectionError(f"{type(exc).__name__}: {exc}") from exc
    finally:
        conn.close()


def _backoff(attempts: int) -> timedelta:
    """30 s, 1 min, 2 min … up to an hour, with jitter, so a receiver that is down
    for a while gets the alert soon after it is back, within the retry window."""
    seconds = min(3600, 30 * 2 ** max(0, attempts - 1))
    return timedelta(seconds=seconds * random.uniform(0.8, 1.2))


UNFINISHED = "no outcome: the worker stopped during the attempt"
STOPPED_BEFORE_SENDING = "the worker stopped before the request was whole: not received"
STOPPED_AFTER_SENDING = (
    "the worker stopped after the request went out whole: not sent again, so that it arrives once"
)


def _lease(settings: Settings, now: datetime) -> datetime:
    """Until when an attempt holds its alert: its request's timeout, and a margin."""
    return now + timedelta(seconds=settings.alert_timeout_seconds + 5)


def _settle_unfinished(alert: BudgetAlert) -> bool:
    """The alert's last attempt ended without an outcome (its worker stopped): say
    what came of it. True when the receiver can have the request, which is then
    not sent again."""
    last = db.session.scalar(
        select(AlertDelivery)
        .where(AlertDelivery.alert_id == alert.id)
        .order_by(AlertDelivery.id.desc())
        .limit(1)
    )
    if last is None or last.error != UNFINISHED:
        return False
    if last.sent_at is None:
        last.error = STOPPED_BEFORE_SENDING
        return False
    last.error = STOPPED_AFTER_SENDING
    alert.status = UNCONFIRMED
    ALERT_DELIVERIES.labels(UNCONFIRMED).inc()
    log.warning("alert sent, its answer unknown: not sent again", extra={"alert": alert.id})
    return True


def _claim(settings: Settings, now: datetime) -> tuple[int, int] | None:
    """Take the next due alert: record the attempt and lease the alert for the length
    of one attempt, in one transaction, so no other worker sends it meanwhile and a
    worker that dies mid-attempt leaves a trace and a retry after the lease.
    Returns the attempt's id and number; None when nothing is due."""
    while True:
        alert = db.session.scalar(
            select(BudgetAlert)
            .where(BudgetAlert.status == QUEUED, BudgetAlert.next_attempt_at <= now)
            .order_by(BudgetAlert.id)
            .limit(1)
            .with_for_update(skip_locked=True)
        )
        if alert is None:
            db.session.rollback()
            return None
        customer = db.session.get(BillingCustomer, alert.customer_id)
        if customer is None or not customer.alert_webhook_url:
            alert.status = NO_WEBHOOK  # readable through the API; nowhere to send it
            db.session.commit()
            continue
        if _settle_unfinished(alert):
            db.session.commit()
            continue
        alert.attempts += 1
        alert.next_attempt_at = _lease(settings, now)
        attempt = AlertDelivery(
            alert_id=alert.id, url=customer.alert_webhook_url, attempted_at=now, error=UNFINISHED
        )
        db.session.add(attempt)
        db.session.commit()
        return attempt.id, alert.attempts


def _committing(attempt_id: int, alert_id: int, number: int, settings: Settings) -> bool:
    """Record that the attempt's request goes out, if the alert is still this
    attempt's (a worker slower than its lease finds another attempt and stops),
    and hold the alert while the answer comes."""
    now = utcnow()
    held = execute_dml(
        update(BudgetAlert)
        .where(BudgetAlert.id == alert_id, BudgetAlert.attempts == number)
        .values(next_attempt_at=_lease(settings, now))
    ).rowcount
    if held:
        db.session.execute(
            update(AlertDelivery).where(AlertDelivery.id == attempt_id).values(sent_at=now)
        )
    db.session.commit()
    return bool(held)


def _attempt(attempt_id: int, number: int, settings: Settings, now: datetime) -> str:
    """Send the claimed attempt, record its outcome; the alert's status afterwards."""
    attempt = db.session.get(AlertDelivery, attempt_id)
    assert attempt is not None
    alert = db.session.get(BudgetAlert, attempt.alert_id)
    assert alert is not None
    customer = db.session.get(BillingCustomer, alert.customer_id)
    assert customer is not None
    db.session.commit()  # no transaction held open across the request
    body = json.dumps({"id": f"alert_{alert.id}", **alert.payload}, sort_keys=True).encode()
    status_code: int | None = None
    error: str | None = None
    try:
        addresses = check_url(attempt.url, settings)
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "usage-billing-alerts",
            **signed_headers(customer.alert_webhook_secret or "", f"alert_{alert.id}", body, now),
        }
        committing = partial(_committing, attempt_id, alert.id, number, settings)
        status_code = _post(
            attempt.url, addresses, body, headers, settings.alert_timeout_seconds, committing
        )
    except (ValidationError, ConnectionError, OSError) as exc:
        error = f"{type(exc).__name__}: {exc}"[:2000]
    attempt.status_code, attempt.error = status_code, error
    if status_code is not None and 200 <= status_code < 300:
        alert.status, alert.delivered_at = DELIVERED, now
    elif alert.attempts != number:
        pass  # another worker holds the alert now
    elif now - alert.created_at >= timedelta(hours=settings.alert_retry_hours):
        alert.status = ABANDONED
        log.error("alert abandoned after %s attempts", alert.attempts, extra={"alert": alert.id})
    else:
        # Queued again, even if a worker took this (slow) attempt for a dead one meanwhile.
        alert.status, alert.next_attempt_at = QUEUED, now + _backoff(alert.attempts)
    db.session.commit()
    ALERT_DELIVERIES.labels("delivered" if alert.status == DELIVERED else "failed").inc()
    return alert.status


def deliver_due(settings: Settings, now: datetime | None = None, limit: int = 100) -> int:
    """Attempt every queued alert that is due (at most ``limit``); how many were attempted."""
    now = now or utcnow()
    done = 0
    while done < limit and (claimed := _claim(settings, now)) is not None:
        _attempt(*claimed, settings, now)
        done += 1
    return done
