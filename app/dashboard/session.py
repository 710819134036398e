"""Signing in to the pages: a session kept on the server, CSRF on every form, headers.

The cookie (signed, HttpOnly, SameSite=Lax, Secure when the request came over
https) holds two random tokens: the session's, which finds its row in
``page_sessions`` (``app/dashboard/models.py``), and the CSRF token. Nothing in it
is derived from a key or a secret. Signing out ends the row, so a copy of the
cookie is worth nothing afterwards; a key revoked, a customer deactivated or the
admin token changed end the session at its next request; each ends after
``SESSION_HOURS``. Every POST carries the CSRF token in a form field; a form
without it is refused.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from datetime import timedelta
from pathlib import Path

from flask import (
    Flask,
    Request,
    Response,
    abort,
    current_app,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from flask.sessions import SecureCookieSession, SecureCookieSessionInterface, SessionMixin
from sqlalchemy import delete, select
from werkzeug.middleware.proxy_fix import ProxyFix
from werkzeug.wrappers import Response as BaseResponse

from app.columns import utcnow
from app.config import Settings
from app.customers.models import ApiKey, BillingCustomer
from app.dashboard.models import ADMIN, CUSTOMER, PageSession
from app.extensions import db
from app.security import hash_api_key, token_matches

CSRF_FIELD = "csrf_token"
_SESSION_FIELD = "session"  # the cookie's session token
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
    """Flask's signed cookie, marked Secure whenever the request itself was https.

    Flask opens the session of every request, an API call's too, and builds its
    signing serializer to do it: 17–23 µs of each metered call here for a cookie
    API clients never send. A request without cookies gets its empty session
    at once, and one whose session was neither read nor changed writes nothing,
    as Flask would decide only after working out the cookie's attributes.
    """

    def get_cookie_secure(self, app: Flask) -> bool:
        return request.is_secure

    def open_session(self, app: Flask, request: Request) -> SecureCookieSession | None:
        if "HTTP_COOKIE" not in request.environ:  # not request.cookies: it scans every header
            return self.session_class()
        return super().open_session(app, request)

    def save_session(self, app: Flask, session: SessionMixin, response: Response) -> None:
        if session or session.modified or session.accessed:
            super().save_session(app, session, response)


def _secret_key(settings: Settings) -> str:
    if settings.secret_key:
        return settings.secret_key.get_secret_value()
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
    if not token_matches(request.form.get(CSRF_FIELD, ""), session.get(CSRF_FIELD, "")):
        abort(400, description="the form has expired; reload the page and try again")


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _admin_check(settings: Settings) -> str:
    """What proves an admin session was opened with today's admin token: an HMAC of
    it under SECRET_KEY, kept on the server only."""
    key = current_app.config["SECRET_KEY"].encode()
    return hmac.new(
        key, settings.admin_token.get_secret_value().encode(), hashlib.sha256
    ).hexdigest()


def _start(kind: str, **who: object) -> None:
    """A new session on the server, and a cookie holding only its random token."""
    now = utcnow()
    db.session.execute(delete(PageSession).where(PageSession.expires_at < now))  # lapsed ones
    token = secrets.token_urlsafe(32)
    lifetime = current_app.permanent_session_lifetime
    db.session.add(
        PageSession(token_hash=_hash(token), kind=kind, expires_at=now + lifetime, **who)
    )
    db.session.commit()
    session.clear()
    session.permanent = True
    session[_SESSION_FIELD] = token
    session[CSRF_FIELD] = secrets.token_urlsafe(32)  # a new token for the new session


def _current(kind: str) -> PageSession | None:
    """The live session of the cookie's token, of this kind."""
    token = session.get(_SESSION_FIELD)
    if not isinstance(token, str):
        return None
    found = db.session.get(PageSession, _hash(token))
    if found is None or found.ended_at is not None or found.expires_at <= utcnow():
        return None
    return found if found.kind == kind else None


def _holder(key: ApiKey | None) -> BillingCustomer | None:
    """The active customer holding this live key; None for any other key."""
    if key is None or key.is_revoked:
        return None
    customer = db.session.get(BillingCustomer, key.customer_id)
    return customer if customer is not None and customer.is_active else None


def sign_in_customer(api_key: str) -> BillingCustomer | None:
    """Start a customer's session from a live key; None (and no session) otherwise."""
    key = db.session.scalar(select(ApiKey).where(ApiKey.key_hash == hash_api_key(api_key)))
    customer = _holder(key)
    if customer is not None and key is not None:
        _start(CUSTOMER, customer_id=customer.id, key_id=key.id)
    return customer


def signed_in_customer() -> BillingCustomer | None:
    """The session's customer, while its key is live and the customer active."""
    found = _current(CUSTOMER)
    if found is None or found.key_id is None:
        return None
    key = db.session.get(ApiKey, found.key_id)
    customer = _holder(key) if key and key.customer_id == found.customer_id else None
    if customer is None:
        _end(found)
    return customer


def sign_in_admin(token: str, settings: Settings, operator: str) -> bool:
    """Open an admin session for ``operator`` (the name its actions are recorded under)."""
    if not token_matches(token, settings.admin_token.get_secret_value()):
        return False
    _start(ADMIN, admin_check=_admin_check(settings), operator=operator)
    return True


def signed_in_operator(settings: Settings) -> str | None:
    """Who the admin session is (its operator's name), while it was opened with the
    admin token still in force; None otherwise."""
    found = _current(ADMIN)
    if found is None or not settings.admin_token:
        return None
    if not hmac.compare_digest(found.admin_check or "", _admin_check(settings)):
        _end(found)
        return None
    return found.operator or "admin"


def signed_in_admin(settings: Settings) -> bool:
    """Whether the session is the admin's, opened with the admin token still in force."""
    return signed_in_operator(settings) is not None


def _end(found: PageSession) -> None:
    found.ended_at = utcnow()
    db.session.commit()
    session.clear()


def sign_in_form(who: str, error: str | None = None) -> tuple[str, int]:
    """The sign-in page (``who``: customer or admin), 401 with the error after a failed try."""
    page = render_template("sign_in.html", csrf=csrf_token(), who=who, error=error)
    return page, 401 if error else 200


def sign_out(then: str) -> BaseResponse:
    """End the session, on the server (a form carrying its CSRF token asked), and go to
    ``then``: the cookie, kept or copied, signs no one in again."""
    check_csrf()
    for kind in (CUSTOMER, ADMIN):
        found = _current(kind)
        if found is not None:
            found.ended_at = utcnow()
    db.session.commit()
    session.clear()
    return redirect(url_for(then))
