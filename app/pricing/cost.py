"""What a call costs: Decimal arithmetic over a model's price rules, no database, no float.

A price version is either flat (our own JSON source: USD per token for input,
output and cache reads) or the price source's own rules (genai-prices): a
price for each unit it states (input, output, cache reads and writes, audio,
requests, …), per million tokens or per thousand requests, which may change
with the prompt's size (long-context tiers: above the threshold every token
pays the tier's rate) and with the time of the call (dated changes, off-peak
windows). An event is priced by the rules at its own timestamp, with exactly
the source's arithmetic: each priced unit is charged for its own part of the
usage (input less what is cached, cached less what is cached audio, …: the
source's decomposition), a unit the model has no price for being charged with
its parent. The common case, input, output and cache reads, is computed here
directly; every other, by the source's own functions; a test holds both equal
to ``calc_price`` across the catalogue.

A flat price charges cached tokens at its cache-read price (the input price
without one), and every other part of the input or output (cache writes,
audio, reasoning) at the input or output price.
Costs are kept to ``MONEY_SCALE`` places (10⁻¹² USD), rounded half-even.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime, time
from decimal import ROUND_HALF_EVEN, Decimal
from functools import cache
from typing import Any, NamedTuple

from genai_prices import types as source
from genai_prices.types import (  # the source's own steps of ModelPrice.calc_price
    _collect_resolved_model_prices,
    _compute_registry_priced_counts,
    calc_unit_price,
)
from genai_prices.units import _get_registry

from app.columns import MONEY_SCALE

PER_MILLION = Decimal(1_000_000)
_QUANTUM = Decimal(1).scaleb(-MONEY_SCALE)
# The usage one event can have that the direct arithmetic charges: anything else (a
# cache write, audio, a price per request) goes through the source's functions.
_DIRECT = frozenset({"input_tokens", "output_tokens", "cache_read_tokens"})

Counts = Mapping[str, "int | Decimal"]  # usage key → count, as the source's Usage holds them


def to_money(value: Decimal) -> Decimal:
    return value.quantize(_QUANTUM, rounding=ROUND_HALF_EVEN)


class Line(NamedTuple):
    """One unit's charge: its part of the usage, the rate per unit, and the amount."""

    units: int | Decimal
    rate: Decimal
    amount: Decimal


Lines = dict[str, Line]  # by usage key, in the source's order


def lines_json(lines: Lines) -> dict[str, list[Any]]:
    """The lines as an event stores them: {usage key: [units, rate, amount]}, money as
    decimal strings."""
    return {
        key: [
            line.units if isinstance(line.units, int) else str(line.units),
            format(line.rate, "f"),
            format(line.amount, "f"),
        ]
        for key, line in lines.items()
    }


class Cost(NamedTuple):
    """What one event was charged: the per-token rates applied, and the amounts.

    ``lines`` is each priced unit's charge, when the three rates do not tell it
    alone (a cache write, audio, a fee per request); None otherwise. A tuple,
    not a frozen dataclass: made once per event.
    """

    input_rate: Decimal
    output_rate: Decimal
    cache_read_rate: Decimal | None
    input: Decimal
    output: Decimal
    total: Decimal
    lines: Lines | None = None


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
        """Whether a refresh must add a row. Two prices with the source's rules differ
        only where the rules do: the flat figures are the rules' price at the instant
        they were read, which for a price by the time of day (DeepSeek's off-peak) or a
        dated change differs by the hour with nothing changed."""
        if self.rules is not None and other.rules is not None:
            return self.rules != other.rules
        return (self.input, self.output, self.cache_read, self.rules) != (
            other.input,
            other.output,
            other.cache_read,
            other.rules,
        )


def cost_of(counts: Counts, price: TokenPrice) -> Cost:
    """The cost of one call at a flat price (one without the source's rules)."""
    tokens_cache_read = counts.get("cache_read_tokens", 0)
    uncached = counts.get("input_tokens", 0) - tokens_cache_read
    cache_price = price.input if price.cache_read is None else price.cache_read
    input_cost = uncached * price.input + tokens_cache_read * cache_price
    output_cost = counts.get("output_tokens", 0) * price.output
    return Cost(
        price.input,
        price.output,
        price.cache_read,
        Decimal(input_cost),
        Decimal(output_cost),
        Decimal(input_cost + output_cost),
    )


# -- The source's rules -----------------------------------------------------------------
Price = Decimal | source.TieredPrices  # USD per ``per`` units, maybe tiered by prompt size
# One unit's price, compiled: (tier start, USD per unit, that rate as an event stores
# it), highest start first, the base rate last with start -1. A prompt above a
# tier's start pays that tier's rate on every unit, as the source defines it.
Tiers = tuple[tuple[int, Decimal, Decimal], ...]


def _tiers(price: Price, per: int | Decimal = PER_MILLION) -> Tiers:
    steps = [(-1, price.base if isinstance(price, source.TieredPrices) else price)]
    if isinstance(price, source.TieredPrices):
        steps += [(tier.start, tier.price) for tier in price.tiers]
    per_unit = [(start, rate / per) for start, rate in steps]  # exact: a shift
    return tuple((start, rate, to_money(rate)) for start, rate in reversed(per_unit))


def _pick(tiers: Tiers, tokens_input: int | Decimal) -> tuple[Decimal, Decimal]:
    for start, rate, shown in tiers:
        if tokens_input > start:
            return rate, shown
    raise AssertionError("the base rate starts below any token count")


class _Direct(NamedTuple):
    """A variant's input, output and cache-read prices, for a call with no other usage."""

    input: Tiers
    output: Tiers
    cache_read: Tiers | None


class _Unit(NamedTuple):
    """One unit the variant prices: its usage key, direction, tiers, and the units it
    holds (its parts, by index), whose own charges come out of its count."""

    key: str
    direction: str | None
    tiers: Tiers
    parts: tuple[int, ...]


class _Variant(NamedTuple):
    """A price variant compiled once: the direct arithmetic for the common call, and
    the source's decomposition for any other, its units most specific first."""

    direct: _Direct | None
    units: tuple[_Unit, ...]
    per_request: Tiers | None
    tiered: bool
    exact: bool  # every rate within MONEY_SCALE places: costs need no rounding


@cache
def _implied_by(key: str) -> tuple[frozenset[str], tuple[tuple[str, str], ...]]:
    """What makes the source refuse to take ``key`` as 0 when a call does not state it:
    a part of it stated (its descendants), or two overlapping keys whose overlap it is."""
    registry = _get_registry()
    unit = registry.units[key]
    descendants = frozenset(
        other.usage_key
        for other in registry.units.values()
        if other is not unit and unit.dimensions.items() <= other.dimensions.items()
    )
    others = sorted(registry.units.values(), key=lambda u: u.usage_key)
    pairs = tuple(
        (a.usage_key, b.usage_key)
        for i, a in enumerate(others)
        for b in others[i + 1 :]
        if a.is_compatible_with(b)
        and not a.dimensions.items() <= b.dimensions.items()
        and not b.dimensions.items() <= a.dimensions.items()
        and {**a.dimensions, **b.dimensions} == dict(unit.dimensions)
    )
    return descendants, pairs


def _compile(prices: source.ModelPrice) -> _Variant:
    registry = _get_registry()
    resolved = _collect_resolved_model_prices(prices, registry)
    priced = sorted(
        ((unit, price) for unit, price in resolved if unit.usage_key != "requests"),
        key=lambda item: (-len(item[0].dimensions), item[0].usage_key),
    )
    units = tuple(
        _Unit(
            unit.usage_key,
            unit.dimensions.get("direction"),
            _tiers(price, unit.per),
            tuple(
                j
                for j, (other, _) in enumerate(priced)
                if other is not unit and unit.dimensions.items() <= other.dimensions.items()
            ),
        )
        for unit, price in priced
    )
    requests = [(unit, price) for unit, price in resolved if unit.usage_key == "requests"]
    per_request = _tiers(requests[0][1], requests[0][0].per) if requests else None
    stated = {unit.usage_key: price for unit, price in resolved}
    direct = None
    if per_request is None and {"input_tokens", "output_tokens"} <= stated.keys():
        cache = stated.get("cache_read_tokens")
        direct = _Direct(
            _tiers(stated["input_tokens"]),
            _tiers(stated["output_tokens"]),
            None if cache is None else _tiers(cache),
        )
    every = [u.tiers for u in units] + ([per_request] if per_request else [])
    return _Variant(
        direct,
        units,
        per_request,
        tiered=any(isinstance(price, source.TieredPrices) for _, price in resolved),
        exact=all(rate == shown for tiers in every for _, rate, shown in tiers),
    )


def _direct(variant: _Variant, direct: _Direct, counts: Counts) -> Cost:
    tokens_input = counts.get("input_tokens", 0)
    tokens_cache_read = counts.get("cache_read_tokens", 0)
    input_rate, input_shown = _pick(direct.input, tokens_input)
    output_rate, output_shown = _pick(direct.output, tokens_input)
    if direct.cache_read is None:
        cache_shown = None
        input_cost = tokens_input * input_rate
    else:
        cache_rate, cache_shown = _pick(direct.cache_read, tokens_input)
        input_cost = (tokens_input - tokens_cache_read) * input_rate
        input_cost += tokens_cache_read * cache_rate
    output_cost = counts.get("output_tokens", 0) * output_rate
    total = input_cost + output_cost
    if not variant.exact:
        input_cost, output_cost, total = (
            to_money(input_cost),
            to_money(output_cost),
            to_money(total),
        )
    return Cost(input_shown, output_shown, cache_shown, input_cost, output_cost, total)


def _decomposed(variant: _Variant, counts: Counts) -> Cost | None:
    """The source's decomposition with the variant's units compiled: each unit's part
    of the usage (its count less its parts' own), at its rate. None where the source
    would infer or refuse something (a unit left unstated while a part of it is
    stated; a part larger than its whole): its own functions decide those."""
    tokens_input = counts.get("input_tokens", 0) if variant.tiered else 0
    leaves: list[int | Decimal] = []
    lines: Lines = {}
    input_cost = output_cost = total = Decimal(0)
    for unit in variant.units:
        count = counts.get(unit.key)
        if count is None:
            descendants, pairs = _implied_by(unit.key)
            if any(counts.get(k) for k in descendants) or any(
                counts.get(a) and counts.get(b) for a, b in pairs
            ):
                return None
            count = 0
        leaf = count - sum(leaves[i] for i in unit.parts)
        if leaf < 0:
            return None
        leaves.append(leaf)
        if leaf:
            rate, shown = _pick(unit.tiers, tokens_input)
            amount = leaf * rate
            lines[unit.key] = Line(leaf, shown, to_money(amount))
            total += amount
            if unit.direction == "input":
                input_cost += amount
            elif unit.direction == "output":
                output_cost += amount
    if variant.per_request is not None:
        rate, shown = _pick(variant.per_request, tokens_input)
        lines["requests"] = Line(1, shown, to_money(rate))
        total += rate
    return Cost(
        _rate_of(variant, "input_tokens", tokens_input) or Decimal(0),
        _rate_of(variant, "output_tokens", tokens_input) or Decimal(0),
        _rate_of(variant, "cache_read_tokens", tokens_input),
        to_money(input_cost),
        to_money(output_cost),
        to_money(total),
        lines,
    )


def _rate_of(variant: _Variant, key: str, tokens_input: int | Decimal) -> Decimal | None:
    for unit in variant.units:
        if unit.key == key:
            return _pick(unit.tiers, tokens_input)[1]
    return None


def _by_source(prices: source.ModelPrice, counts: Counts) -> Cost:
    """The source's own arithmetic (``ModelPrice.calc_price``, step by step), keeping
    each unit's line: the decomposition into parts, then each part at its rate."""
    registry = _get_registry()
    resolved = _collect_resolved_model_prices(prices, registry)
    usage = source.Usage(**counts)
    parts = _compute_registry_priced_counts(resolved, usage)
    tiered = any(isinstance(price, source.TieredPrices) for _, price in resolved)
    total_input = usage.input_tokens if tiered else 0
    lines: Lines = {}
    input_cost = output_cost = total = Decimal(0)
    for unit, price in resolved:
        amount = calc_unit_price(price, parts[unit.usage_key], total_input, unit.per)
        total += amount
        direction = unit.dimensions.get("direction")
        if direction == "input":
            input_cost += amount
        elif direction == "output":
            output_cost += amount
        if parts[unit.usage_key]:
            rate = _pick(_tiers(price, unit.per), int(total_input))[1]
            lines[unit.usage_key] = Line(int(parts[unit.usage_key]), rate, to_money(amount))
    rates = {unit.usage_key: price for unit, price in resolved}

    def rate_of(key: str) -> Decimal | None:
        price = rates.get(key)
        return None if price is None else _pick(_tiers(price), int(total_input))[1]

    return Cost(
        rate_of("input_tokens") or Decimal(0),
        rate_of("output_tokens") or Decimal(0),
        rate_of("cache_read_tokens"),
        to_money(input_cost),
        to_money(output_cost),
        to_money(total),
        lines,
    )


@dataclass
class PriceRules:
    """A model's price rules from the source, ready to price events.

    Built once per price version (``PriceRules.parse``) and kept by the price book.
    """

    model: source.ModelInfo
    # Each variant's prices compiled, by id of its prices.
    compiled: dict[int, _Variant]
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

    def cost(self, counts: Counts, when: datetime) -> Cost:
        """What usage ``counts`` cost at ``when``; ``ValueError`` (from the source) when
        they cannot be taken apart into the parts this model prices."""
        # The variant in force at the event's time.
        prices = self.fixed if self.fixed is not None else self.model.get_prices(when)
        variant = self.compiled[id(prices)]
        if variant.direct is not None and all(
            key in _DIRECT or not value for key, value in counts.items()
        ):
            return _direct(variant, variant.direct, counts)
        return _decomposed(variant, counts) or _by_source(prices, counts)


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
