"""Prices and model names from the maintained ``genai-prices`` data, and from a JSON list.

``genai-prices`` knows ~2,300 models of ~47 providers with their aliases (dated
snapshots such as ``gpt-4o-2024-08-06``), so we never type prices by hand. Each
model's price rules are kept whole (``app/pricing/cost.py``: tiers by prompt
size, dated changes, off-peak windows), so an event is charged what the source
says for its own token counts and timestamp.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from functools import lru_cache
from typing import Any

from genai_prices import data_snapshot

from app.columns import MONEY_SCALE
from app.pricing.cost import TokenPrice, definition_of

BUNDLED_SOURCE = "genai-prices"
_PER_MILLION = Decimal(1_000_000)
_PRICE_QUANTUM = Decimal(1).scaleb(-MONEY_SCALE)
# Names routers and SDKs use for a provider, mapped to genai-prices' ids.
PROVIDER_ALIASES = {
    "gemini": "google",
    "google-gla": "google",
    "vertex": "google",
    "vertex_ai": "google",
    "xai": "x-ai",
    "grok": "x-ai",
    "bedrock": "aws",
    "azure_openai": "azure",
    "mistralai": "mistral",
    "together_ai": "together",
    "fireworks_ai": "fireworks",
}


class PriceSourceError(ValueError):
    """A price source that cannot be trusted; nothing from it is applied."""


def _per_token(value: Any) -> Decimal | None:
    """USD per million → USD per token, at our 12-place scale.

    A few entries of the data were once floats (``1.8000000000000002E-7``);
    rounding at 10⁻¹² USD per token removes that noise and nothing else.
    """
    if value is None:
        return None
    base = getattr(value, "base", value)  # TieredPrices → its base rate, for display
    return (Decimal(base) / _PER_MILLION).quantize(_PRICE_QUANTUM)


def normalize_provider(provider: str) -> str:
    provider = provider.strip().lower()
    return PROVIDER_ALIASES.get(provider, provider)


@lru_cache(maxsize=65536)
def canonical_model(provider: str, model: str) -> tuple[str, str]:
    """The (provider, model) our price table is keyed by, for any alias of a model.

    ``openai/gpt-4o-2024-08-06`` with provider ``openrouter`` and ``gpt-4o`` with
    provider ``openai`` both come back as ``("openai", "gpt-4o")``. A provider
    that resells another's models without prices of its own (Azure's OpenAI
    models) comes back as the provider whose prices the source falls back to. A
    name genai-prices does not know is returned as given (lower-cased), so a
    price loaded from our own JSON source for it is still found.
    """
    provider = normalize_provider(provider)
    model = model.strip().lower()
    candidates = [(provider, model)]  # as the source resolves the call, first
    if "/" in model:  # then a router's "maker/model" as the maker's own model
        prefix, rest = model.split("/", 1)
        if normalize_provider(prefix) in _owners().values():
            candidates.append((normalize_provider(prefix), rest))
    snapshot = data_snapshot.get_snapshot()
    for provider_id, model_ref in candidates:
        try:
            _, found = snapshot.find_provider_model(model_ref, None, provider_id or None, None)
        except LookupError:
            continue
        return _owners()[id(found)], found.id
    return candidates[-1]


@lru_cache(maxsize=1)
def _owners() -> dict[int, str]:
    """Each model of the bundled data → the id of the provider that lists it."""
    return {
        id(model): provider.id
        for provider in data_snapshot.get_snapshot().providers
        for model in provider.models
    }


def bundled_prices(now: datetime | None = None) -> Iterator[tuple[str, str, TokenPrice]]:
    """Every token-priced model of the bundled genai-prices data, with its whole rules."""
    now = now or datetime.now(UTC)
    for provider in data_snapshot.get_snapshot().providers:
        for model in provider.models:
            prices = model.get_prices(now)
            input_price = _per_token(getattr(prices, "input_mtok", None))
            output_price = _per_token(getattr(prices, "output_mtok", None))
            if input_price is None or output_price is None:
                continue  # image, audio or search-only models: not token-priced
            yield (
                provider.id,
                model.id,
                TokenPrice(
                    input=input_price,
                    output=output_price,
                    cache_read=_per_token(getattr(prices, "cache_read_mtok", None)),
                    effective_from=now,
                    source=BUNDLED_SOURCE,
                    rules=definition_of(model.prices),
                ),
            )


def _decimal_field(entry: dict[str, Any], name: str, index: int, required: bool) -> Decimal | None:
    raw = entry.get(name)
    if raw is None and not required:
        return None
    if isinstance(raw, bool) or not isinstance(raw, (str, int, Decimal)):
        raise PriceSourceError(f"entry {index}: {name} must be a number or a decimal string")
    try:
        value = Decimal(str(raw))
    except InvalidOperation as exc:
        raise PriceSourceError(f"entry {index}: {name} is not a number") from exc
    if not value.is_finite() or value < 0:
        raise PriceSourceError(f"entry {index}: {name} must be a non-negative number")
    return value


def parse_price_list(body: bytes, source: str, now: datetime) -> list[tuple[str, str, TokenPrice]]:
    """Parse a JSON price list; any malformed entry rejects the whole list.

    Format: ``{"prices": [{"provider": "openai", "model": "gpt-4o",
    "input_per_token": "0.0000025", "output_per_token": "0.00001",
    "cache_read_per_token": "0.00000125"}]}``. JSON numbers are read as Decimal,
    so no float ever touches a price.
    """
    try:
        document = json.loads(body, parse_float=Decimal)
    except (ValueError, UnicodeDecodeError) as exc:
        raise PriceSourceError(f"not JSON: {exc}") from exc
    entries = document.get("prices") if isinstance(document, dict) else None
    if not isinstance(entries, list) or not entries:
        raise PriceSourceError('expected an object with a non-empty "prices" list')
    parsed: list[tuple[str, str, TokenPrice]] = []
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise PriceSourceError(f"entry {index}: not an object")
        provider, model = entry.get("provider"), entry.get("model")
        if not isinstance(provider, str) or not provider.strip():
            raise PriceSourceError(f"entry {index}: provider missing")
        if not isinstance(model, str) or not model.strip():
            raise PriceSourceError(f"entry {index}: model missing")
        input_price = _decimal_field(entry, "input_per_token", index, True)
        output_price = _decimal_field(entry, "output_per_token", index, True)
        assert input_price is not None and output_price is not None
        key = canonical_model(provider, model)
        parsed.append(
            (
                key[0],
                key[1],
                TokenPrice(
                    input=input_price,
                    output=output_price,
                    cache_read=_decimal_field(entry, "cache_read_per_token", index, False),
                    effective_from=now,
                    source=source,
                ),
            )
        )
    return parsed
