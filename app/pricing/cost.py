"""What a call costs: pure Decimal arithmetic, no database, no float.

Prices are USD per token. Cached-input tokens are a subset of the input tokens,
charged at the cache-read price when the model has one and at the input price
otherwise, so a source without cache prices never under-charges.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import NamedTuple


@dataclass(frozen=True)
class TokenPrice:
    input: Decimal
    output: Decimal
    cache_read: Decimal | None
    effective_from: datetime
    source: str

    def differs_from(self, other: TokenPrice) -> bool:
        return (self.input, self.output, self.cache_read) != (
            other.input,
            other.output,
            other.cache_read,
        )


class Cost(NamedTuple):
    """A tuple, not a frozen dataclass: made once per event, and a frozen
    dataclass's ``__init__`` cost more than the arithmetic."""

    input: Decimal
    output: Decimal

    @property
    def total(self) -> Decimal:
        return self.input + self.output


def cost_of(
    tokens_input: int, tokens_output: int, tokens_cache_read: int, price: TokenPrice
) -> Cost:
    uncached = tokens_input - tokens_cache_read
    cache_price = price.input if price.cache_read is None else price.cache_read
    input_cost = uncached * price.input + tokens_cache_read * cache_price
    return Cost(input_cost, tokens_output * price.output)  # positional: keywords cost twice
