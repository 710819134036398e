"""Column types shared by the models.

``Money`` keeps money exact on both databases: ``NUMERIC(24, 12)`` on
PostgreSQL, and on the embedded SQLite default (which has no decimal type and
would silently turn NUMERIC into float) an integer count of 10⁻¹² USD, so sums
and upserts stay exact there too. SQLite's 64-bit integers cap one value at
about 9.2 million USD: ample for the demo, and the reason production is PostgreSQL.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import JSON, BigInteger, DateTime, Numeric, String
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator, TypeEngine

MONEY_SCALE = 12
_QUANTUM = Decimal(1).scaleb(-MONEY_SCALE)


def utcnow() -> datetime:
    return datetime.now(UTC)


def money_str(value: Decimal) -> str:
    """A decimal string for JSON: fixed-point, never exponent notation."""
    return format(value, "f")


def amount_str(value: Decimal) -> str:
    """A limit or a spend as people write it: no trailing zeros ("1500", "0.01")."""
    return format(value.normalize(), "f")


class Money(TypeDecorator[Decimal]):
    impl = Numeric(24, MONEY_SCALE)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "sqlite":
            return dialect.type_descriptor(BigInteger())
        return dialect.type_descriptor(Numeric(24, MONEY_SCALE, asdecimal=True))

    def process_bind_param(self, value: Any, dialect: Dialect) -> Any:
        if value is None:
            return None
        exact = Decimal(value)
        if exact != exact.quantize(_QUANTUM):
            raise ValueError(f"{value} has more than {MONEY_SCALE} decimal places")
        if dialect.name == "sqlite":
            return int(exact.scaleb(MONEY_SCALE))
        return exact

    def process_result_value(self, value: Any, dialect: Dialect) -> Decimal | None:
        if value is None:
            return None
        if dialect.name == "sqlite":
            return Decimal(int(value)).scaleb(-MONEY_SCALE).quantize(_QUANTUM)
        return Decimal(value)


class Quantity(TypeDecorator[Decimal]):
    """An exact amount that is never summed in SQL (a budget's limit, in USD or tokens):
    ``NUMERIC(24, 12)`` on PostgreSQL, its decimal text on SQLite, where ``Money``'s
    integer count of 10⁻¹² would cap a tokens limit at 9.2 million."""

    impl = Numeric(24, MONEY_SCALE)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "sqlite":
            return dialect.type_descriptor(String(40))
        return dialect.type_descriptor(Numeric(24, MONEY_SCALE, asdecimal=True))

    def process_bind_param(self, value: Any, dialect: Dialect) -> Any:
        if value is None:
            return None
        exact = Decimal(value)
        return format(exact, "f") if dialect.name == "sqlite" else exact

    def process_result_value(self, value: Any, dialect: Dialect) -> Decimal | None:
        return None if value is None else Decimal(value)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on both databases (SQLite drops the zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Dialect) -> Any:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime")
        return value.astimezone(UTC)

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


NON_FINITE = frozenset({"nan", "inf", "-inf"})  # how finite_json writes NaN and ±Infinity


def finite_json(value: Any) -> Any:
    """``value`` with NaN and ±Infinity as the strings "nan", "inf", "-inf": JSON
    (PostgreSQL's, orjson's) has no such numbers, and orjson would write null."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {key: finite_json(item) for key, item in value.items()}
    if isinstance(value, list):
        return [finite_json(item) for item in value]
    return value


class AnyJSON(TypeDecorator[Any]):
    """JSON that takes any parsed JSON, NaN and ±Infinity too, as "nan", "inf", "-inf".

    For payloads kept as they came (a rejected event, to be replayed): Python's
    parser takes non-finite numbers, PostgreSQL's json refuses them, and failing
    to keep one would fail its whole batch. As a string the value is still
    invalid on replay.
    """

    impl = JSON
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Dialect) -> Any:
        return finite_json(value)
