"""Model prices: the history of record. A change adds a row; no row is rewritten."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import JSON, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from app.columns import Money, UTCDateTime, utcnow
from app.extensions import Model


class ModelPrice(Model):
    __tablename__ = "model_prices"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    provider: Mapped[str] = mapped_column(String(64))
    model: Mapped[str] = mapped_column(String(128))
    input_price: Mapped[Decimal] = mapped_column(Money)
    output_price: Mapped[Decimal] = mapped_column(Money)
    cache_read_price: Mapped[Decimal | None] = mapped_column(Money)
    # The source's rules (app/pricing/cost.py); NULL for a flat price.
    rules: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    effective_from: Mapped[datetime] = mapped_column(UTCDateTime)
    source: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    __table_args__ = (
        UniqueConstraint("provider", "model", "effective_from", name="uq_model_prices_version"),
    )
