"""Signed-in sessions of the pages, kept on the server.

The cookie holds a random token and nothing else of who is signed in; the row is
found by the token's SHA-256 (a copy of the table lets no one in). Signing out
ends the row, so a saved cookie is worth nothing afterwards; a revoked key, a
deactivated customer or a changed admin token end the session at its next
request; every session ends after ``SESSION_HOURS``.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Boolean, ForeignKey, Index, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from app.columns import UTCDateTime, utcnow
from app.extensions import Model

CUSTOMER, ADMIN = "customer", "admin"


class PageSession(Model):
    __tablename__ = "page_sessions"

    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    customer_id: Mapped[int | None] = mapped_column(
        ForeignKey("billing_customers.id", ondelete="CASCADE")
    )
    key_id: Mapped[int | None] = mapped_column(Integer)
    # An admin session's proof of the admin token it was opened with: an HMAC keyed
    # by SECRET_KEY, kept here only; a changed token no longer matches it.
    admin_check: Mapped[str | None] = mapped_column(String(64))
    operator: Mapped[str | None] = mapped_column(String(100))  # who an admin session is
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    __table_args__ = (Index("ix_page_sessions_expires", "expires_at"),)


class AdminAction(Model):
    """What an operator did from /admin: who, when, to what, and how it went. Kept,
    never changed."""

    __tablename__ = "admin_actions"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    operator: Mapped[str] = mapped_column(String(100))
    action: Mapped[str] = mapped_column(String(40))
    target: Mapped[str | None] = mapped_column(String(200))
    outcome: Mapped[str] = mapped_column(String(500))
    succeeded: Mapped[bool] = mapped_column(Boolean)

    __table_args__ = (Index("ix_admin_actions_at", "at"),)
