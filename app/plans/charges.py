"""What a customer owes for a billing period under its plan: exact, in Decimal, line by line.

A plan prices usage in one **unit**: ``usd`` (each event's provider cost plus the
plan's markup, or our own per-token prices where an override names the model)
or ``tokens``. The period's units are priced by the plan's **tiers**, as Stripe's
``tiers_mode`` defines them: ``graduated`` (each unit at the price of the tier it
falls in, a tier's flat amount once when it is first entered) or ``volume``
(every unit at the price of the tier the period's total reaches, and that
tier's flat amount once). A plan in ``usd`` without tiers charges one dollar per
dollar. The **included** units are the period's first units, free. A **minimum**
tops a closed period's total up to it.

A plan change takes effect at midnight UTC and splits the period into segments,
each charged by its own plan. A segment starts where the period's usage before
it stands, measured in the segment plan's own unit: its included units are what
is left of them after that usage, and its tiers continue from there. So the
allowance is used once across a change, and a period charged in one segment or
cut in two under the same plan costs the same.

Usage (``ModelDay``) is taken in a fixed order (day, provider, model): it decides which
model's units fall in which tier, so every line is reproducible.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal, localcontext
from typing import Any, Literal

Unit = Literal["usd", "tokens"]
Mode = Literal["graduated", "volume"]
ZERO = Decimal(0)
PRECISION = 80  # digits: far past any product of our prices and amounts


@dataclass(frozen=True)
class Tier:
    """Units up to ``up_to`` (counted from the period's start; None: no end)."""

    up_to: Decimal | None
    unit_price: Decimal
    flat_amount: Decimal = ZERO


@dataclass(frozen=True)
class ModelDay:
    """One model's usage on one day, as ``usage_daily`` holds it."""

    day: date
    provider: str
    model: str
    tokens_input: int  # every input token (app/pricing/dimensions.py)
    tokens_output: int  # every output token
    tokens_cache_read: int
    tokens_cache_write: int
    cost: Decimal

    @property
    def tokens_total(self) -> int:
        """What a tokens plan counts: every input and output token, whatever its kind."""
        return self.tokens_input + self.tokens_output

    def plus(self, other: ModelDay) -> ModelDay:
        """This usage and ``other`` (of the same model) as one, on this one's day."""
        return ModelDay(
            self.day,
            self.provider,
            self.model,
            self.tokens_input + other.tokens_input,
            self.tokens_output + other.tokens_output,
            self.tokens_cache_read + other.tokens_cache_read,
            self.tokens_cache_write + other.tokens_cache_write,
            self.cost + other.cost,
        )


@dataclass(frozen=True)
class Override:
    """Our own per-token prices for a provider's model (every model when ``model`` is None).

    Cache reads and cache writes are charged at their own prices where the override
    names one, else as input; every other part of the input or output (audio,
    reasoning) as input or output.
    """

    provider: str
    model: str | None
    input: Decimal
    output: Decimal
    cache_read: Decimal | None = None
    cache_write: Decimal | None = None

    def charge(self, usage: ModelDay) -> Decimal:
        uncached = usage.tokens_input
        amount = ZERO
        for tokens, price in (
            (usage.tokens_cache_read, self.cache_read),
            (usage.tokens_cache_write, self.cache_write),
        ):
            if price is not None:
                uncached -= tokens
                amount += tokens * price
        return amount + uncached * self.input + usage.tokens_output * self.output


@dataclass(frozen=True)
class Terms:
    unit: Unit = "usd"
    markup_percent: Decimal = ZERO
    overrides: tuple[Override, ...] = ()
    mode: Mode = "graduated"
    tiers: tuple[Tier, ...] = ()
    included: Decimal = ZERO
    minimum: Decimal = ZERO

    def price_of(self, position: Decimal) -> tuple[int, Tier]:
        """Graduated: the tier of the units just past ``position`` (its index from 1)."""
        tiers = self.tiers or (Tier(None, Decimal(1)),)
        for index, tier in enumerate(tiers, start=1):
            if tier.up_to is None or position < tier.up_to:
                return index, tier
        return len(tiers), tiers[-1]

    def reached(self, total: Decimal) -> tuple[int, Tier]:
        """Volume: the tier a period's ``total`` falls in (``up_to`` is the tier's own)."""
        tiers = self.tiers or (Tier(None, Decimal(1)),)
        for index, tier in enumerate(tiers, start=1):
            if tier.up_to is None or total <= tier.up_to:
                return index, tier
        return len(tiers), tiers[-1]


LineKind = Literal["usage", "included", "flat", "minimum"]


@dataclass(frozen=True)
class Line:
    """One line of an invoice: a model's units in one tier (tier 0: included, free)."""

    kind: LineKind
    provider: str
    model: str
    tier: int
    units: Decimal
    unit_price: Decimal
    amount: Decimal


@dataclass
class Charge:
    """A period's charge so far: its lines, and what they add up to."""

    lines: list[Line] = field(default_factory=list)
    cost: Decimal = ZERO  # what the usage cost us (provider prices)
    included_used: Decimal = ZERO

    @property
    def total(self) -> Decimal:
        return exact_sum(line.amount for line in self.lines)


def exact_sum(values: Iterable[Decimal]) -> Decimal:
    with localcontext(prec=PRECISION):
        return sum(values, ZERO)


def units_of(terms: Terms, usage: ModelDay) -> Decimal:
    """The usage in the plan's unit: tokens, or USD of our cost plus markup (or our prices)."""
    if terms.unit == "tokens":
        return Decimal(usage.tokens_total)
    for override in terms.overrides:
        if override.provider == usage.provider and override.model in (None, usage.model):
            return override.charge(usage)
    return usage.cost * (1 + terms.markup_percent / 100)


def _ordered(usages: Iterable[ModelDay]) -> list[ModelDay]:
    return sorted(usages, key=lambda u: (u.day, u.provider, u.model))


def _graduated(terms: Terms, usage: ModelDay, start: Decimal, units: Decimal) -> list[Line]:
    """Units [start, start + units) of the period, each at its tier's price."""
    lines, position, left = [], start, units
    while left > 0:
        index, tier = terms.price_of(position)
        room = left if tier.up_to is None else min(left, tier.up_to - position)
        lines.append(
            Line(
                "usage",
                usage.provider,
                usage.model,
                index,
                room,
                tier.unit_price,
                room * tier.unit_price,
            )
        )
        position += room
        left -= room
    return lines


def _flats_entered(terms: Terms, usage: ModelDay, start: Decimal, units: Decimal) -> list[Line]:
    """Graduated: the flat amount of each tier whose first charged unit (included units
    are free, flats too) is in the charged units [start, start + units)."""
    lines, tier_start = [], ZERO
    for index, tier in enumerate(terms.tiers, start=1):
        first = max(tier_start, terms.included)
        inside = tier.up_to is None or first < tier.up_to
        if tier.flat_amount and inside and start <= first < start + units:
            flat = Line("flat", usage.provider, usage.model, index, ZERO, ZERO, tier.flat_amount)
            lines.append(flat)
        if tier.up_to is None:
            break
        tier_start = tier.up_to
    return lines


def charge_segment(*args: Any, **kwargs: Any) -> Charge:
    """``_charge_segment`` with the precision exact arithmetic needs: a price of 12
    places times an amount of 24 stays exact (Decimal's default keeps 28 digits)."""
    with localcontext(prec=PRECISION):
        return _charge_segment(*args, **kwargs)


def _charge_segment(
    terms: Terms,
    before: Sequence[ModelDay],
    usages: Sequence[ModelDay],
    period_units: Decimal | None = None,
) -> Charge:
    """Charge ``usages`` under ``terms``, the period's earlier usage being ``before``.

    ``period_units`` (volume mode) is the period's total in this plan's unit, when the
    period runs on past this segment; by default the segment ends it.
    """
    position = sum((units_of(terms, u) for u in before), ZERO)
    ordered = _ordered(usages)
    units_each = [units_of(terms, u) for u in ordered]  # each usage's units, computed once
    charge = Charge(cost=sum((u.cost for u in ordered), ZERO))
    free_left = max(ZERO, terms.included - position)
    if period_units is None:
        period_units = position + sum(units_each, ZERO)
    volume_index, volume_tier = terms.reached(period_units)
    for usage, units in zip(ordered, units_each, strict=True):
        free = min(units, free_left)
        if free:
            charge.lines.append(Line("included", usage.provider, usage.model, 0, free, ZERO, ZERO))
            charge.included_used += free
            free_left -= free
        chargeable = units - free
        if chargeable and terms.mode == "volume":
            charge.lines.append(
                Line(
                    "usage",
                    usage.provider,
                    usage.model,
                    volume_index,
                    chargeable,
                    volume_tier.unit_price,
                    chargeable * volume_tier.unit_price,
                )
            )
        elif chargeable:
            charge.lines.extend(_flats_entered(terms, usage, position + free, chargeable))
            charge.lines.extend(_graduated(terms, usage, position + free, chargeable))
        position += units
    if terms.mode == "volume" and volume_tier.flat_amount and period_units > terms.included:
        charge.lines.append(Line("flat", "", "", volume_index, ZERO, ZERO, volume_tier.flat_amount))
    return charge


def merged(charge: Charge) -> Charge:
    """The same charge with one line per (kind, model, tier, price): what an invoice shows."""
    with localcontext(prec=PRECISION):
        return _merged(charge)


def _merged(charge: Charge) -> Charge:
    totals: dict[tuple[LineKind, str, str, int, Decimal], list[Decimal]] = {}
    for line in charge.lines:
        key = (line.kind, line.provider, line.model, line.tier, line.unit_price)
        units, amount = totals.setdefault(key, [ZERO, ZERO])
        totals[key] = [units + line.units, amount + line.amount]
    lines = [Line(k[0], k[1], k[2], k[3], u, k[4], a) for k, (u, a) in totals.items()]
    return Charge(lines, charge.cost, charge.included_used)


def with_minimum(charge: Charge, minimum: Decimal) -> Charge:
    """A closed period's charge, topped up to the plan's minimum."""
    with localcontext(prec=PRECISION):
        short = minimum - charge.total
    if short <= 0:
        return charge
    top_up = Line("minimum", "", "", 0, ZERO, ZERO, short)
    return Charge([*charge.lines, top_up], charge.cost, charge.included_used)
