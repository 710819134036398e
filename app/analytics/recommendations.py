"""Cost recommendations: for the models a customer spends most on, the models of the
price book that would have cost less for its actual token mix, and what caching
would save. A price comparison, not a quality claim: it says nothing of whether
another model would do the work as well.

One row per distinct model: a provider's alias of it (``liquid/lfm-7b`` through a
router, ``lfm-7b`` from its maker) is folded into the model the price book knows.
Its candidates are comparable models only: those of a group an operator curates
(``RECOMMENDATION_GROUPS``) that holds it, else its own provider's, so a 7B model
is never offered in place of a frontier one from another family.

The mix is each model's calls over the range: their input (of it, cache reads)
and output tokens. It is priced at today's prices, per average call (so a price
tiered by prompt size takes the tier of the average prompt), times the calls;
the current model is priced the same way, so the two compare like for like.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from app.analytics.usage import UsageRequest, rollup_rows
from app.columns import money_str
from app.customers.models import ApiKey
from app.pricing.book import PriceBook
from app.pricing.catalog import canonical_model
from app.pricing.dimensions import COLUMNS, USAGE_KEY_OF

TOP_MODELS = 3
ALTERNATIVES = 5
# What caching is assumed to reach, stated in the answer: half of the input not read
# from cache today would be.
CACHE_SHARE = Decimal("0.5")
NOTE = (
    "A price comparison at today's list prices for the same tokens, not a quality "
    "claim: it says nothing about whether another model would do the work as well."
)
_SUMS = ("events", *COLUMNS, "cost_total")


@dataclass
class Mix:
    """One model's calls over the range, and their usage in every dimension."""

    calls: int = 0
    tokens: dict[str, int] = field(default_factory=lambda: dict.fromkeys(COLUMNS, 0))
    cost: Decimal = Decimal(0)

    @property
    def tokens_input(self) -> int:
        return self.tokens["tokens_input"]

    @property
    def tokens_cache_read(self) -> int:
        return self.tokens["tokens_cache_read"]

    def add(self, row: Any) -> None:
        self.calls += int(row.events)
        for name in COLUMNS:
            self.tokens[name] += int(getattr(row, name))
        self.cost += Decimal(row.cost_total or 0)

    def merge(self, other: Mix) -> None:
        """Add another mix's calls, tokens and cost (the same model under another name)."""
        self.calls += other.calls
        for name, tokens in other.tokens.items():
            self.tokens[name] += tokens
        self.cost += other.cost

    def priced(
        self, book: PriceBook, provider: str, model: str, when: datetime, cached: int
    ) -> Decimal | None:
        """The mix's cost on this model, ``cached`` of its input tokens read from cache."""
        average = {
            USAGE_KEY_OF[name]: round(value / self.calls) for name, value in self.tokens.items()
        }
        average["cache_read_tokens"] = round(cached / self.calls)
        try:
            cost = book.cost(provider, model, when, average)
        except ValueError:  # a mix this model's parts cannot be taken apart into
            return None
        return None if cost is None else cost.total * self.calls


def _caching(
    mix: Mix, book: PriceBook, provider: str, model: str, now: datetime, base: Decimal | None
) -> dict[str, Any]:
    """What reading more of the input from cache would save, against ``base`` (the mix's
    cost at today's prices, as it is cached today)."""
    price = book.price_at(provider, model, now)
    uncached = mix.tokens_input - mix.tokens_cache_read
    if price is None or price.cache_read is None:
        return {"available": False, "saving": None}
    more = mix.tokens_cache_read + int(uncached * CACHE_SHARE)
    cached = mix.priced(book, provider, model, now, more)
    saving = None if base is None or cached is None else max(base - cached, Decimal(0))
    return {
        "available": True,
        "cache_read_share": float(round(mix.tokens_cache_read / mix.tokens_input, 4))
        if mix.tokens_input
        else None,
        "assumption": f"{CACHE_SHARE:%} of the input not read from cache today would be",
        "saving": None if saving is None else money_str(saving),
    }


Model = tuple[str, str]  # (provider, model) as the price book keys it


def comparable_groups(groups: list[list[str]]) -> list[frozenset[Model]]:
    """``RECOMMENDATION_GROUPS`` ("provider/model" names) as the price book's keys."""
    return [
        frozenset(canonical_model(*name.split("/", 1)) for name in group if "/" in name)
        for group in groups
    ]


def _candidates(book: PriceBook, model: Model, groups: list[frozenset[Model]]) -> list[Model]:
    """What ``model`` is compared with: its curated groups' models, else its provider's."""
    curated = {other for group in groups if model in group for other in group}
    if curated:
        return sorted(curated - {model})
    return [other for other in book.models() if other[0] == model[0] and other != model]


def _name(model: Model) -> str:
    """A model's own name, whoever sells it: ``liquid/lfm-7b`` on a router is ``lfm-7b``."""
    return model[1].rsplit("/", 1)[-1]


def _folded(mixes: dict[Model, Mix]) -> dict[Model, Mix]:
    """One mix per model name: what one model cost under each seller's name, summed,
    and priced as the seller it cost most through."""
    by_name: dict[str, list[tuple[Model, Mix]]] = defaultdict(list)
    for model, mix in mixes.items():
        by_name[_name(model)].append((model, mix))
    folded = {}
    for sellers in by_name.values():
        main = max(sellers, key=lambda seller: (seller[1].cost, seller[0]))[0]
        whole = Mix()
        for _, mix in sellers:
            whole.merge(mix)
        folded[main] = whole
    return folded


def _distinct(cheaper: list[tuple[Decimal, Model]]) -> list[tuple[Decimal, Model]]:
    """The cheapest seller of each model name (the list is sorted by cost)."""
    first: dict[str, tuple[Decimal, Model]] = {}
    for cost, model in cheaper:
        first.setdefault(_name(model), (cost, model))
    return list(first.values())


def recommendations(
    keys: list[ApiKey],
    book: PriceBook,
    now: datetime,
    days: int,
    groups: list[frozenset[Model]] | None = None,
) -> dict[str, Any]:
    """The top models by cost over the last ``days`` complete days, each with cheaper
    comparable models for its mix and what caching would save."""
    last = now.astimezone(UTC).date() - timedelta(days=1)
    first = last - timedelta(days=days - 1)
    mixes: dict[Model, Mix] = defaultdict(Mix)
    for row in rollup_rows(keys, UsageRequest(first, last, "total", ("provider", "model")), _SUMS):
        mixes[canonical_model(row.provider, row.model)].add(row)
    top = sorted(_folded(mixes).items(), key=lambda item: (-item[1].cost, item[0]))[:TOP_MODELS]
    models = []
    for (provider, model), mix in top:
        current = mix.priced(book, provider, model, now, mix.tokens_cache_read)
        cheaper = []
        if current is not None:
            for other in _candidates(book, (provider, model), groups or []):
                cost = mix.priced(book, *other, now, mix.tokens_cache_read)
                if cost is not None and cost < current:
                    cheaper.append((cost, other))
        cheaper = _distinct(sorted(cheaper))
        models.append(
            {
                "provider": provider,
                "model": model,
                "calls": mix.calls,
                **mix.tokens,
                "cost": money_str(mix.cost),
                "cost_at_today_prices": None if current is None else money_str(current),
                "cheaper_models": [
                    {
                        "provider": other[0],
                        "model": other[1],
                        "cost": money_str(cost),
                        "saving": money_str(current - cost),
                    }
                    for cost, other in cheaper[:ALTERNATIVES]
                    if current is not None  # cheaper is empty otherwise
                ],
                "caching": _caching(mix, book, provider, model, now, current),
            }
        )
    return {
        "kind": "price_comparison",
        "note": f"{NOTE} Over {first} to {last} (the last {days} complete days), "
        "against comparable models only: "
        + ("the operator's groups, else " if groups else "")
        + "the same provider's.",
        "start_date": first.isoformat(),
        "end_date": last.isoformat(),
        "currency": "usd",
        "models": models,
    }
