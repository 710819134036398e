"""API keys and service tokens.

Keys are stored and logged only as their SHA-256 hex digest. The upstream API
issues keys with ≥128 bits of randomness, so an unsalted digest cannot be
brute-forced and needs no server secret that could be lost or rotated; it is
also the hash the original design and the upstream key store use, so events
from other services join on it without sharing a secret.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Any
from urllib.parse import urlsplit

from flask import Request

from app.errors import AuthenticationError, PermissionDenied, ValidationError


def hash_api_key(api_key: str) -> str:
    return hashlib.sha256(api_key.encode("utf-8")).hexdigest()


def bearer_token(request: Request) -> str:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise AuthenticationError("a Bearer token is required", field="Authorization")
    return token.strip()


def token_matches(supplied: str, expected: str) -> bool:
    """Equal, compared in constant time; an unset ``expected`` matches nothing."""
    return bool(expected) and hmac.compare_digest(supplied.encode(), expected.encode())


def require_token(request: Request, expected: str, what: str) -> None:
    """Compare a shared token in constant time; an unset token locks the endpoint."""
    if not token_matches(bearer_token(request), expected):
        raise PermissionDenied(f"a valid {what} token is required", field="Authorization")


def is_admin(request: Request, settings: Any) -> bool:
    """Whether the bearer token is the admin token (set, and equal in constant time)."""
    supplied = request.headers.get("Authorization", "").partition(" ")[2].strip()
    return token_matches(supplied, settings.admin_token.get_secret_value())


def allowed_return_url(url: str, origins: tuple[str, ...], field: str) -> str:
    """An absolute http(s) URL on one of ``origins`` (``BILLING_PORTAL_ALLOWED_ORIGINS``),
    where Stripe may send a customer back: anything else is a 400 naming ``field``."""
    parts = urlsplit(url)
    if parts.scheme not in {"http", "https"} or not parts.netloc:
        raise ValidationError(f"{field} must be an absolute http(s) URL", field=field)
    origin = f"{parts.scheme}://{parts.netloc}".lower()
    if origin not in {o.lower() for o in origins}:
        raise ValidationError(f"{field} is not on an allowed origin", field=field)
    return url
