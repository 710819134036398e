"""Price plans, versioned and never edited in place, and which customer is on which, from when."""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

from sqlalchemy import JSON, Date, ForeignKey, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from app.extensions import db
from app.models.types import UTCDateTime, utcnow

DEFAULT_PLAN = "standard"  # every customer without a plan of its own: provider cost, no markup


class PricePlan(db.Model):
    """One version of a plan: its terms as data (``app.plans.terms``). A change is a new
    version; a version is never edited, so a period is always priced as it was."""

    __tablename__ = "price_plans"
    __table_args__ = (UniqueConstraint("code", "version"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    code: Mapped[str] = mapped_column(String(64))
    version: Mapped[int] = mapped_column(Integer)
    name: Mapped[str] = mapped_column(String(200))
    terms: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class PlanAssignment(db.Model):
    """A customer on a plan version from midnight UTC of ``effective_from`` until its next."""

    __tablename__ = "plan_assignments"
    __table_args__ = (UniqueConstraint("customer_id", "effective_from"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    customer_id: Mapped[int] = mapped_column(
        ForeignKey("billing_customers.id", ondelete="CASCADE"), index=True
    )
    plan_id: Mapped[int] = mapped_column(ForeignKey("price_plans.id"))
    effective_from: Mapped[date] = mapped_column(Date)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
