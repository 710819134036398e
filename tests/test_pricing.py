"""Pricing: exact Decimal costs, aliases, price history, and the JSON source."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from flask import Flask
from sqlalchemy import select

from app.extensions import db
from app.models import ModelPrice
from app.pricing.catalog import PriceSourceError, canonical_model, parse_price_list
from app.pricing.cost import TokenPrice, cost_of
from app.services.prices import PriceBook

NOW = datetime(2026, 11, 1, tzinfo=UTC)


def price(inp: str, out: str, cache: str | None = None) -> TokenPrice:
    return TokenPrice(
        Decimal(inp), Decimal(out), None if cache is None else Decimal(cache), NOW, "t"
    )


def test_cost_is_exact_decimal_with_cached_input() -> None:
    cost = cost_of(1_000_003, 7, 3, price("0.0000025", "0.00001", "0.00000125"))
    assert cost.input == Decimal("2.50000375")  # 1,000,000 × 2.5e-6 + 3 × 1.25e-6
    assert cost.output == Decimal("0.00007")
    assert cost.total == Decimal("2.50007375")
    assert isinstance(cost.total, Decimal)


def test_cached_tokens_without_a_cache_price_pay_the_input_price() -> None:
    assert cost_of(10, 0, 4, price("0.1", "0.2")).input == Decimal("1.0")


@pytest.mark.parametrize(
    ("provider", "model", "expected"),
    [
        ("openai", "gpt-4o-2024-08-06", ("openai", "gpt-4o")),
        ("OpenAI", "GPT-4o", ("openai", "gpt-4o")),
        ("openrouter", "anthropic/claude-3-5-sonnet-20241022", ("anthropic", "claude-3-5-sonnet")),
        ("anthropic", "claude-3-5-sonnet-20241022", ("anthropic", "claude-3-5-sonnet")),
        ("gemini", "gemini-2.5-pro", ("google", "gemini-2.5-pro")),
        ("openai", "in-house-model", ("openai", "in-house-model")),
    ],
)
def test_model_aliases_resolve_to_one_price_key(provider: str, model: str, expected: tuple) -> None:
    assert canonical_model(provider, model) == expected


def test_price_book_charges_the_price_in_force_when_the_event_happened() -> None:
    old = ModelPrice(
        provider="openai",
        model="gpt-4o",
        input_price=Decimal("0.000005"),
        output_price=Decimal("0.000015"),
        cache_read_price=None,
        effective_from=NOW - timedelta(days=30),
        source="t",
    )
    new = ModelPrice(
        provider="openai",
        model="gpt-4o",
        input_price=Decimal("0.0000025"),
        output_price=Decimal("0.00001"),
        cache_read_price=None,
        effective_from=NOW,
        source="t",
    )
    book = PriceBook([new, old])
    assert book.price_at("openai", "gpt-4o", NOW - timedelta(days=1)).input == Decimal("0.000005")
    assert book.price_at("openai", "gpt-4o-2024-08-06", NOW).input == Decimal("0.0000025")
    assert book.price_at("openai", "gpt-4o", NOW - timedelta(days=31)) is None


def test_price_list_reads_json_numbers_as_decimals() -> None:
    body = (
        b'{"prices": [{"provider": "openai", "model": "gpt-4o", "input_per_token": 0.0000021,'
        b' "output_per_token": "0.000009"}]}'
    )
    [(provider, model, parsed)] = parse_price_list(body, "test", NOW)
    assert (provider, model) == ("openai", "gpt-4o")
    assert parsed.input == Decimal("0.0000021") and parsed.output == Decimal("0.000009")


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b'{"prices": []}',
        b'{"prices": [{"provider": "openai", "model": "gpt-4o", "input_per_token": "-1", "output_per_token": "1"}]}',
        b'{"prices": [{"provider": "openai", "model": "gpt-4o", "input_per_token": "abc", "output_per_token": "1"}]}',
        b'{"prices": [{"model": "gpt-4o", "input_per_token": "1", "output_per_token": "1"}]}',
        b'{"prices": [{"provider": "openai", "model": "gpt-4o", "input_per_token": true, "output_per_token": "1"}]}',
    ],
)
def test_malformed_price_list_is_refused_whole(body: bytes) -> None:
    with pytest.raises(PriceSourceError):
        parse_price_list(body, "test", NOW)


def test_money_survives_the_database_exactly(app: Flask) -> None:
    with app.app_context():
        row = ModelPrice(
            provider="test",
            model="exact",
            input_price=Decimal("0.000000000001"),
            output_price=Decimal("9000000.123456789012"),
            cache_read_price=None,
            effective_from=NOW,
            source="t",
        )
        db.session.add(row)
        db.session.commit()
        loaded = db.session.scalar(select(ModelPrice).where(ModelPrice.model == "exact"))
        assert loaded.input_price == Decimal("0.000000000001")
        assert loaded.output_price == Decimal("9000000.123456789012")
        db.session.delete(loaded)
        db.session.commit()
