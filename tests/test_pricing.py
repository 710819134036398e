"""Pricing: exact Decimal costs, aliases, price history, and the JSON source."""

from __future__ import annotations

import random
from collections import Counter
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from flask import Flask
from genai_prices import Usage, calc_price, data_snapshot
from sqlalchemy import create_engine, select

from app.extensions import db
from app.ingest.models import UsageEvent
from app.pricing.book import SEED_EFFECTIVE_FROM, PriceBook, price_row
from app.pricing.catalog import (
    PriceSourceError,
    bundled_prices,
    canonical_model,
    parse_price_list,
)
from app.pricing.cost import TokenPrice, cost_of, to_money
from app.pricing.dimensions import COLUMNS, USAGE_KEY_OF
from app.pricing.models import ModelPrice
from tests.factories import event
from tests.helpers import measured, record, tokens

NOW = datetime(2026, 11, 1, tzinfo=UTC)


def price(inp: str, out: str, cache: str | None = None) -> TokenPrice:
    return TokenPrice(
        Decimal(inp), Decimal(out), None if cache is None else Decimal(cache), NOW, "t"
    )


def test_cost_is_exact_decimal_with_cached_input() -> None:
    cost = cost_of(tokens(1_000_003, 7, 3), price("0.0000025", "0.00001", "0.00000125"))
    assert cost.input == Decimal("2.50000375")  # 1,000,000 × 2.5e-6 + 3 × 1.25e-6
    assert cost.output == Decimal("0.00007")
    assert cost.total == Decimal("2.50007375")
    assert isinstance(cost.total, Decimal)


def test_cached_tokens_without_a_cache_price_pay_the_input_price() -> None:
    assert cost_of(tokens(10, 0, 4), price("0.1", "0.2")).input == Decimal("1.0")


@pytest.mark.parametrize(
    ("provider", "model", "expected"),
    [
        ("openai", "gpt-4o-2024-08-06", ("openai", "gpt-4o")),
        ("OpenAI", "GPT-4o", ("openai", "gpt-4o")),
        ("openrouter", "anthropic/claude-3-5-sonnet-20241022", ("anthropic", "claude-3-5-sonnet")),
        ("anthropic", "claude-3-5-sonnet-20241022", ("anthropic", "claude-3-5-sonnet")),
        ("gemini", "gemini-2.5-pro", ("google", "gemini-2.5-pro")),
        ("openai", "in-house-model", ("openai", "in-house-model")),
        # Resellers without prices of their own: the source falls back to the maker's.
        ("azure", "gpt-4o", ("openai", "gpt-4o")),
        ("azure_openai", "gpt-4o-2024-08-06", ("openai", "gpt-4o")),
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


def _bundled(provider: str, model: str) -> PriceBook:
    """A price book holding the source's rules for one model, in force since 2000."""
    [price] = [p for pr, m, p in bundled_prices() if (pr, m) == (provider, model)]
    return PriceBook([price_row(provider, model, price, SEED_EFFECTIVE_FROM)])


@pytest.mark.parametrize(
    ("provider", "model", "threshold", "base", "above"),
    [
        ("anthropic", "claude-sonnet-4-5", 200_000, "3", "6"),
        ("google", "gemini-2.5-pro", 200_000, "1.25", "2.5"),
        ("google", "gemini-1.5-flash", 128_000, "0.075", "0.15"),
    ],
)
def test_a_prompt_above_a_long_context_threshold_pays_the_tier_rate_on_every_token(
    provider: str, model: str, threshold: int, base: str, above: str
) -> None:
    book = _bundled(provider, model)
    at, over = threshold, threshold + 1
    below = book.cost(provider, model, NOW, tokens(at))
    beyond = book.cost(provider, model, NOW, tokens(over))
    assert below.input == at * Decimal(base) / 1_000_000
    assert beyond.input == over * Decimal(above) / 1_000_000  # the whole prompt, not the excess
    assert beyond.input_rate == Decimal(above) / 1_000_000


def test_deepseek_is_charged_its_off_peak_price_by_the_event_time_of_day() -> None:
    book = _bundled("deepseek", "deepseek-chat")
    peak = book.cost(
        "deepseek", "deepseek-chat", datetime(2026, 11, 2, 12, 0, tzinfo=UTC), tokens(10**6)
    )
    off_peak = book.cost(
        "deepseek", "deepseek-chat", datetime(2026, 11, 2, 17, 0, tzinfo=UTC), tokens(10**6)
    )
    assert (peak.input, off_peak.input) == (Decimal("0.27"), Decimal("0.135"))


def test_an_azure_openai_event_is_priced_by_the_source_fallback() -> None:
    book = _bundled("openai", "gpt-4o")
    assert book.cost("azure", "gpt-4o-2024-08-06", NOW, tokens(1000, 500)).total == Decimal(
        "0.0075"
    )


def _resolvable_models() -> list[tuple[str, str]]:
    """Every (provider, model) of the catalogue that the source prices by its own id."""
    snapshot = data_snapshot.get_snapshot()
    found = []
    for provider, model, _ in bundled_prices():
        try:
            snapshot.find_provider_model(model, None, provider, None)
        except LookupError:
            continue
        found.append((provider, model))
    return found


def _random_usage(rnd: random.Random) -> dict[str, Any]:
    """A call's usage in every dimension, each part within what includes it: prompts
    on both sides of long-context thresholds, sometimes cache reads and writes (of
    an hour, too), audio in and out, reasoning, web searches."""
    tokens_input = rnd.choice(
        [rnd.randint(0, 4000), rnd.randint(120_000, 260_000), rnd.randint(0, 10**9)]
    )
    tokens_output = rnd.randint(0, 10**6)

    def part(of: int, chance: float = 0.5) -> int:
        return rnd.randint(0, of) if rnd.random() < chance else 0

    cache_read = part(tokens_input)
    cache_write = part(tokens_input - cache_read, 0.3)
    cached_audio = part(cache_read, 0.2)  # both cached and audio: audio beyond it is not cached
    audio = cached_audio + part(tokens_input - cache_read - cache_write, 0.2)
    fields: dict[str, Any] = {
        "tokens_input": tokens_input,
        "tokens_output": tokens_output,
        "tokens_cache_read": cache_read,
        "tokens_cache_write": cache_write,
        "tokens_input_audio": audio,
        "tokens_cache_audio_read": cached_audio,
        "tokens_output_audio": (output_audio := part(tokens_output, 0.2)),
        "tokens_output_reasoning": part(tokens_output - output_audio, 0.3),
    }
    extra = {}
    if cache_write and rnd.random() < 0.5:
        extra["cache_write_1h_tokens"] = rnd.randint(0, cache_write)
    if rnd.random() < 0.2:
        extra["web_searches"] = rnd.randint(1, 20)
    if extra:
        fields["usage_extra"] = extra
    return fields


def test_random_events_across_the_catalogue_cost_exactly_what_the_source_computes(
    app: Flask,
) -> None:
    """3,000 events through the worker's recording path (COPY on PostgreSQL): random
    models of the whole catalogue (a fee per request where one is priced), usage in
    every dimension the ledger keeps and some it keeps in ``usage_extra``,
    timestamps at any time of day over the last 35 days (dated changes, off-peak
    windows). Each stored cost equals genai-prices' ``calc_price`` for that usage,
    kept to 10⁻¹² USD (the ledger's scale; exact wherever the source's figure has no
    more places)."""
    seed = random.randrange(2**32)
    rnd = random.Random(seed)
    models = _resolvable_models()
    now = datetime.now(UTC)
    events = []
    for n in range(3000):
        provider, model = rnd.choice(models)
        events.append(
            event(
                f"key-{n % 5}",
                provider=provider,
                model=model,
                **_random_usage(rnd),
                timestamp=(now - timedelta(seconds=rnd.randint(60, 34 * 86400))).isoformat(),
            )
        )
    with app.app_context():
        for start in range(0, len(events), 500):
            result = record(events[start : start + 500], now=now)
            assert not result.rejected, result.rejected[:3]
        rows = db.session.scalars(
            select(UsageEvent).where(UsageEvent.event_id.in_([e["event_id"] for e in events]))
        ).all()  # only these: a late batch of an earlier test may land meanwhile
        for row in rows:
            db.session.expunge(row)
        db.session.rollback()
    assert len(rows) == len(events)
    wrong, refused, dimensions = [], 0, Counter()
    for row in rows:
        counts = {USAGE_KEY_OF[name]: getattr(row, name) for name in COLUMNS}
        counts.update(row.usage_extra or {})
        dimensions.update(k for k, v in counts.items() if v)
        try:
            source = calc_price(
                Usage(**counts),
                model_ref=row.model,
                provider_id=row.provider,
                genai_request_timestamp=row.created_at,
            )
        except ValueError:  # the source refuses this mix for this model: so did we
            refused += 1
            assert row.pricing_status == "unpriced" or row.cost_total is None, row.event_id
            continue
        expected = tuple(
            to_money(v) for v in (source.input_price, source.output_price, source.total_price)
        )
        if (row.cost_input, row.cost_output, row.cost_total) != expected:
            wrong.append((row.provider, row.model, counts, row.created_at, expected))
    measured(
        f"pricing against genai-prices: {len(rows)} random events, {len(wrong)} differ;"
        f" dimensions used {dict(sorted(dimensions.items()))}"
    )
    assert not wrong, f"seed {seed}: {wrong[:3]}"
    assert refused == 0


def test_a_refresh_by_another_process_prices_the_next_batch_at_once(app: Flask) -> None:
    """No waiting for a cache to expire: the batch after a refresh committed
    elsewhere reads the new version of the table in its own transaction."""
    with app.app_context():
        record([event(provider="acme", model="fresh-model")])  # the book is loaded
        other_process = create_engine(db.engine.url)
        effective = datetime.now(UTC) - timedelta(seconds=5)
        with other_process.begin() as conn:
            conn.execute(
                ModelPrice.__table__.insert().values(
                    provider="acme",
                    model="fresh-model",
                    input_price=Decimal("0.000001"),
                    output_price=Decimal("0.000002"),
                    effective_from=effective,
                    source="another process",
                    created_at=effective,
                )
            )
        other_process.dispose()
        after = event(provider="acme", model="fresh-model", tokens_input=10, tokens_output=10)
        record([after])
        [row] = db.session.scalars(
            select(UsageEvent).where(UsageEvent.event_id == after["event_id"])
        ).all()
        assert row.cost_total == Decimal("0.00003")
        db.session.query(ModelPrice).filter(ModelPrice.provider == "acme").delete()
        db.session.commit()
