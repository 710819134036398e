"""Price plans, versioned and never edited in place, and which customer is on which, from when."""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

from sqlalchemy import JSON, Date, ForeignKey, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from app.columns import UTCDateTime, utcnow
from app.extensions import Model

DEFAULT_PLAN = "standard"  # every customer without a plan of its own: provider cost, no markup


class PricePlan(Model):
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


class PlanAssignment(Model):
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


class PeriodCharge(Model):
    """A closed billing period's charge, frozen once no event can still arrive for it
    (``MAX_EVENT_AGE_DAYS`` after its end): the daily report then adds it up instead of
    pricing the period again, so its cost does not grow with the history. The total is
    the exact decimal string (it may hold more places than a money column)."""

    __tablename__ = "period_charges"
    __table_args__ = (UniqueConstraint("customer_id", "period_start"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    customer_id: Mapped[int] = mapped_column(
        ForeignKey("billing_customers.id", ondelete="CASCADE"), index=True
    )
    period_start: Mapped[date] = mapped_column(Date)
    period_end: Mapped[date] = mapped_column(Date)
    total: Mapped[str] = mapped_column(String(80))
    frozen_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
