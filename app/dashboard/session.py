"""Signing in to the pages: a signed session cookie, CSRF on every form, security headers.

The cookie holds who is signed in (a customer and the id of the key used, or the
admin with a digest of the admin token), never a key. It is HttpOnly and
SameSite=Lax, Secure when the request came over https, and ends after
``SESSION_HOURS``. A key revoked, a customer deactivated or the admin token
changed ends the session at its next request. Every POST carries the session's
CSRF token in a form field; a form without it is refused.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from datetime import timedelta
from pathlib import Path

from flask import Flask, Response, abort, request, session
from flask.sessions import SecureCookieSessionInterface
from werkzeug.middleware.proxy_fix import ProxyFix

from app.config import Settings
from app.customers.models import ApiKey, BillingCustomer
from app.customers.services import customer_for_key_hash
from app.extensions import db
from app.security import hash_api_key

CSRF_FIELD = "csrf_token"
_SECURITY_HEADERS = {
    # Scripts and styles from this app only: nothing inline, nothing from a CDN.
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


class _SessionInterface(SecureCookieSessionInterface):
    """Flask's signed cookie, marked Secure whenever the request itself was https."""

    def get_cookie_secure(self, app: Flask) -> bool:
        return request.is_secure


def _secret_key(settings: Settings) -> str:
    if settings.secret_key:
        return settings.secret_key
    path = Path(settings.instance_dir) / "secret_key"
    if not path.exists():
        path.touch(mode=0o600)
        path.write_text(secrets.token_urlsafe(48))
    return path.read_text().strip()


def init_sessions(app: Flask, settings: Settings) -> None:
    app.config.update(
        SECRET_KEY=_secret_key(settings),
        SESSION_COOKIE_NAME="ub_session",
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        PERMANENT_SESSION_LIFETIME=timedelta(hours=settings.session_hours),
    )
    app.session_interface = _SessionInterface()
    if settings.trust_proxy:
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=1, x_proto=1, x_host=1)  # type: ignore[method-assign]


def page_headers(response: Response) -> Response:
    response.headers.update(_SECURITY_HEADERS)
    return response


def csrf_token() -> str:
    """The session's CSRF token, made on first use; forms carry it in ``CSRF_FIELD``."""
    if CSRF_FIELD not in session:
        session[CSRF_FIELD] = secrets.token_urlsafe(32)
    return session[CSRF_FIELD]


def check_csrf() -> None:
    """Refuse a POST whose form lacks the session's CSRF token (400, never a 5xx)."""
    sent = request.form.get(CSRF_FIELD, "")
    expected = session.get(CSRF_FIELD, "")
    if not expected or not hmac.compare_digest(sent.encode(), expected.encode()):
        abort(400, description="the form has expired; reload the page and try again")


def _start(**who: object) -> None:
    session.clear()
    session.permanent = True
    session.update(who)
    session[CSRF_FIELD] = secrets.token_urlsafe(32)  # a new token for the new session


def sign_in_customer(api_key: str) -> BillingCustomer | None:
    """Start a customer's session from a live key; None (and no session) otherwise."""
    key_hash = hash_api_key(api_key)
    customer = customer_for_key_hash(key_hash, revoked=False)
    if customer is None or not customer.is_active:
        return None
    key = db.session.query(ApiKey).filter_by(key_hash=key_hash).one()
    _start(customer_id=customer.id, key_id=key.id)
    return customer


def signed_in_customer() -> BillingCustomer | None:
    """The session's customer, while its key is live and the customer active."""
    key_id = session.get("key_id")
    if key_id is None:
        return None
    key = db.session.get(ApiKey, key_id)
    if key is None or key.is_revoked or key.customer_id != session.get("customer_id"):
        session.clear()
        return None
    customer = db.session.get(BillingCustomer, key.customer_id)
    if customer is None or not customer.is_active:
        session.clear()
        return None
    return customer


def _token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def sign_in_admin(token: str, settings: Settings) -> bool:
    expected = settings.admin_token
    if not expected or not hmac.compare_digest(token.encode(), expected.encode()):
        return False
    _start(admin=_token_digest(expected))
    return True


def signed_in_admin(settings: Settings) -> bool:
    """Whether the session is the admin's, signed in with the admin token still in force."""
    digest = session.get("admin")
    if not digest or not settings.admin_token:
        return False
    return hmac.compare_digest(digest, _token_digest(settings.admin_token))


def sign_out() -> None:
    session.clear()
