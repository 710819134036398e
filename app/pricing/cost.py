"""What a call costs: Decimal arithmetic over a model's price rules, no database, no float.

A price version is either flat (our own JSON source: USD per token for input,
output and cache reads) or the price source's own rules (genai-prices): prices
per million tokens that may change with the prompt's size (long-context tiers:
above the threshold every token pays the tier's rate) and with the time of the
call (dated changes, off-peak windows). An event is priced by the rules at its
own timestamp, with exactly the source's arithmetic; the common shapes are
computed here directly, anything else by the source's own ``calc_price``, and a
test holds the two equal across the catalogue.

Cached-input tokens are a subset of the input tokens, charged at the
cache-read price when the model has one and at the input price otherwise.
Costs are kept to ``MONEY_SCALE`` places (10⁻¹² USD), rounded half-even.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, time
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any, NamedTuple

from genai_prices import types as source

from app.models.types import MONEY_SCALE

PER_MILLION = Decimal(1_000_000)
_QUANTUM = Decimal(1).scaleb(-MONEY_SCALE)
# Our events carry input, output and cache-read tokens: any other price the source
# states (cache writes, web searches, audio) charges usage they never have, except
# a price per request, which the source's own arithmetic charges.
_PER_REQUEST_KEY = "requests_kcount"


def to_money(value: Decimal) -> Decimal:
    return value.quantize(_QUANTUM, rounding=ROUND_HALF_EVEN)


class Cost(NamedTuple):
    """What one event was charged: the per-token rates applied, and the amounts.

    A tuple, not a frozen dataclass: made once per event.
    """

    input_rate: Decimal
    output_rate: Decimal
    cache_read_rate: Decimal | None
    input: Decimal
    output: Decimal
    total: Decimal


@dataclass(frozen=True)
class TokenPrice:
    """One price version of a model: flat per-token prices, or the source's rules.

    ``input``/``output``/``cache_read`` are per token: the flat prices, or the
    rules' base rates (for display). ``rules`` is the source's definition as
    stored (``definition_of``); when present it decides every charge.
    """

    input: Decimal
    output: Decimal
    cache_read: Decimal | None
    effective_from: datetime
    source: str
    rules: dict[str, Any] | None = None

    def differs_from(self, other: TokenPrice) -> bool:
        return (self.input, self.output, self.cache_read, self.rules) != (
            other.input,
            other.output,
            other.cache_read,
            other.rules,
        )


def cost_of(
    tokens_input: int, tokens_output: int, tokens_cache_read: int, price: TokenPrice
) -> Cost:
    """The cost of one call at a flat price (one without the source's rules)."""
    uncached = tokens_input - tokens_cache_read
    cache_price = price.input if price.cache_read is None else price.cache_read
    input_cost = uncached * price.input + tokens_cache_read * cache_price
    output_cost = tokens_output * price.output
    return Cost(
        price.input,
        price.output,
        price.cache_read,
        input_cost,
        output_cost,
        input_cost + output_cost,
    )


# -- The source's rules -----------------------------------------------------------------
Price = Decimal | source.TieredPrices  # USD per million tokens, maybe tiered by prompt size
# One token price, compiled: (tier start, USD per token, that rate as an event stores
# it), highest start first, the base rate last with start -1. A prompt above a
# tier's start pays that tier's rate on every token, as the source defines it.
Tiers = tuple[tuple[int, Decimal, Decimal], ...]


def _tiers(price: Price) -> Tiers:
    steps = [(-1, price.base if isinstance(price, source.TieredPrices) else price)]
    if isinstance(price, source.TieredPrices):
        steps += [(tier.start, tier.price) for tier in price.tiers]
    per_token = [(start, rate / PER_MILLION) for start, rate in steps]  # exact: a shift
    return tuple((start, rate, to_money(rate)) for start, rate in reversed(per_token))


def _pick(tiers: Tiers, tokens_input: int) -> tuple[Decimal, Decimal]:
    for start, rate, shown in tiers:
        if tokens_input > start:
            return rate, shown
    raise AssertionError("the base rate starts below any token count")


class _Compiled(NamedTuple):
    """A price variant charged here: input, output and cache-read tokens."""

    input: Tiers
    output: Tiers
    cache_read: Tiers | None
    exact: bool  # every rate within MONEY_SCALE places: costs need no rounding


def _compile(prices: source.ModelPrice) -> _Compiled | None:
    """The variant compiled, or None when it charges per request (the source prices it)."""
    stated = {k: v for k, v in prices.__dict__.items() if v is not None}
    if _PER_REQUEST_KEY in stated:
        return None
    cache = stated.get("cache_read_mtok")
    compiled = (
        _tiers(stated["input_mtok"]),
        _tiers(stated["output_mtok"]),
        None if cache is None else _tiers(cache),
    )
    exact = all(rate == shown for tiers in compiled if tiers for _, rate, shown in tiers)
    return _Compiled(*compiled, exact=exact)


@dataclass
class PriceRules:
    """A model's price rules from the source, ready to price events.

    Built once per price version (``PriceRules.parse``) and kept by the price book.
    """

    model: source.ModelInfo
    # Each variant's prices compiled (None: priced by the source), by id of its prices.
    compiled: dict[int, _Compiled | None]
    # The prices when they hold at every instant (most models): no variant to choose.
    fixed: source.ModelPrice | None

    @classmethod
    def parse(cls, definition: dict[str, Any]) -> PriceRules:
        variants = [
            source.ConditionalPrice(
                constraint=_constraint(variant.get("constraint")),
                prices=source.ModelPrice(
                    **{key: _price(value) for key, value in variant["prices"].items()}
                ),
            )
            for variant in definition["variants"]
        ]
        model = source.ModelInfo(id="stored", match=source.ClauseEquals("stored"), prices=variants)
        compiled = {id(variant.prices): _compile(variant.prices) for variant in variants}
        always = len(variants) == 1 and variants[0].constraint is None
        return cls(model, compiled, variants[0].prices if always else None)

    def cost(
        self, tokens_input: int, tokens_output: int, tokens_cache_read: int, when: datetime
    ) -> Cost:
        # The variant in force at the event's time.
        prices = self.fixed if self.fixed is not None else self.model.get_prices(when)
        compiled = self.compiled[id(prices)]
        if compiled is None:
            return _cost_by_source(prices, tokens_input, tokens_output, tokens_cache_read)
        input_rate, input_shown = _pick(compiled.input, tokens_input)
        output_rate, output_shown = _pick(compiled.output, tokens_input)
        if compiled.cache_read is None:
            cache_shown = None
            input_cost = tokens_input * input_rate
        else:
            cache_rate, cache_shown = _pick(compiled.cache_read, tokens_input)
            input_cost = (tokens_input - tokens_cache_read) * input_rate
            input_cost += tokens_cache_read * cache_rate
        output_cost = tokens_output * output_rate
        total = input_cost + output_cost
        if not compiled.exact:
            input_cost, output_cost, total = (
                to_money(input_cost),
                to_money(output_cost),
                to_money(total),
            )
        return Cost(input_shown, output_shown, cache_shown, input_cost, output_cost, total)


def _cost_by_source(
    prices: source.ModelPrice, tokens_input: int, tokens_output: int, tokens_cache_read: int
) -> Cost:
    """The source's own arithmetic, for what is not computed here."""
    usage = source.Usage(
        input_tokens=tokens_input, output_tokens=tokens_output, cache_read_tokens=tokens_cache_read
    )
    charged = prices.calc_price(usage)
    stated = prices.__dict__
    cache = stated.get("cache_read_mtok")
    return Cost(
        _pick(_tiers(stated["input_mtok"]), tokens_input)[1],
        _pick(_tiers(stated["output_mtok"]), tokens_input)[1],
        None if cache is None else _pick(_tiers(cache), tokens_input)[1],
        to_money(charged["input_price"]),
        to_money(charged["output_price"]),
        to_money(charged["total_price"]),
    )


# -- Stored form of the rules (JSON in model_prices.rules) ------------------------------
def definition_of(prices: source.ModelPrice | list[source.ConditionalPrice]) -> dict[str, Any]:
    """The source's price rules for one model as JSON: variants, constraints, tiers."""
    variants = prices if isinstance(prices, list) else [source.ConditionalPrice(prices=prices)]
    return {
        "variants": [
            {
                "constraint": _constraint_json(variant.constraint),
                "prices": {
                    key: _price_json(value)
                    for key, value in variant.prices.__dict__.items()
                    if value is not None and not key.startswith("_")
                },
            }
            for variant in variants
        ]
    }


def _price_json(value: Price) -> Any:
    if isinstance(value, source.TieredPrices):
        return {
            "base": str(value.base),
            "tiers": [{"start": tier.start, "price": str(tier.price)} for tier in value.tiers],
        }
    return str(value)


def _price(value: Any) -> Price:
    if isinstance(value, dict):
        return source.TieredPrices(
            base=Decimal(value["base"]),
            tiers=[
                source.Tier(start=t["start"], price=Decimal(t["price"])) for t in value["tiers"]
            ],
        )
    return Decimal(value)


def _constraint_json(
    constraint: source.StartDateConstraint | source.TimeOfDateConstraint | None,
) -> dict[str, str] | None:
    if isinstance(constraint, source.StartDateConstraint):
        return {"start_date": constraint.start_date.isoformat()}
    if isinstance(constraint, source.TimeOfDateConstraint):
        return {
            "start_time": constraint.start_time.isoformat(),
            "end_time": constraint.end_time.isoformat(),
        }
    return None


def _constraint(
    value: dict[str, str] | None,
) -> source.StartDateConstraint | source.TimeOfDateConstraint | None:
    if value is None:
        return None
    if "start_date" in value:
        return source.StartDateConstraint(start_date=date.fromisoformat(value["start_date"]))
    return source.TimeOfDateConstraint(
        start_time=time.fromisoformat(value["start_time"]),
        end_time=time.fromisoformat(value["end_time"]),
    )
