"""The price table: seeding, the nightly refresh, and the in-process price book.

Workers price thousands of events a second, so they read prices from a
``PriceBook`` loaded from ``model_prices`` and reloaded every minute, never
one query per event. The book answers "price of this model at that moment",
so an event is charged the price in force when it happened.
"""

from __future__ import annotations

import bisect
import logging
import threading
import time
import urllib.request
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import select

from app.extensions import db
from app.models import ModelPrice
from app.pricing.catalog import (
    BUNDLED_SOURCE,
    PriceSourceError,
    bundled_prices,
    canonical_model,
    parse_price_list,
)
from app.pricing.cost import TokenPrice

log = logging.getLogger("usage_billing.pricing")

# The bundled seed is taken to have been in force since before any event we keep.
SEED_EFFECTIVE_FROM = datetime(2000, 1, 1, tzinfo=UTC)
_SOURCE_TIMEOUT_SECONDS = 30
_MAX_SOURCE_BYTES = 32 * 1024 * 1024


@dataclass(frozen=True)
class RefreshResult:
    checked: int
    added: int
    sources: tuple[str, ...]


def _as_price(row: ModelPrice) -> TokenPrice:
    return TokenPrice(
        input=row.input_price,
        output=row.output_price,
        cache_read=row.cache_read_price,
        effective_from=row.effective_from,
        source=row.source,
    )


def _current_prices() -> dict[tuple[str, str], TokenPrice]:
    current: dict[tuple[str, str], TokenPrice] = {}
    for row in db.session.scalars(select(ModelPrice).order_by(ModelPrice.effective_from)):
        current[(row.provider, row.model)] = _as_price(row)
    return current


def fetch_price_source(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=_SOURCE_TIMEOUT_SECONDS) as response:  # noqa: S310
        body = response.read(_MAX_SOURCE_BYTES + 1)
    if len(body) > _MAX_SOURCE_BYTES:
        raise PriceSourceError("price source is larger than 32 MiB")
    return body


def refresh_prices(source_url: str = "", now: datetime | None = None) -> RefreshResult:
    """Add an effective-dated row wherever a price changed; touch nothing else.

    The URL source (when configured) is fetched and parsed in full before any
    write: a malformed or unreachable source raises and changes nothing. It
    takes precedence over the bundled data for the models it names.
    """
    now = now or datetime.now(UTC)
    current = _current_prices()
    effective_from = now if current else SEED_EFFECTIVE_FROM
    incoming: dict[tuple[str, str], TokenPrice] = {
        (provider, model): price for provider, model, price in bundled_prices(now)
    }
    sources = [BUNDLED_SOURCE]
    if source_url:
        try:
            body = fetch_price_source(source_url)
        except OSError as exc:
            raise PriceSourceError(f"could not fetch {source_url}: {exc}") from exc
        for provider, model, price in parse_price_list(body, source_url, now):
            incoming[(provider, model)] = price
        sources.append(source_url)
    added = 0
    for (provider, model), price in incoming.items():
        known = current.get((provider, model))
        if known is not None and not price.differs_from(known):
            continue
        db.session.add(
            ModelPrice(
                provider=provider,
                model=model,
                input_price=price.input,
                output_price=price.output,
                cache_read_price=price.cache_read,
                effective_from=effective_from,
                source=price.source,
            )
        )
        added += 1
    db.session.commit()
    log.info("prices refreshed", extra={"added": added, "checked": len(incoming)})
    return RefreshResult(checked=len(incoming), added=added, sources=tuple(sources))


class PriceBook:
    """Every price version in memory, keyed by canonical (provider, model)."""

    def __init__(self, rows: list[ModelPrice]) -> None:
        versions: dict[tuple[str, str], list[TokenPrice]] = {}
        for row in sorted(rows, key=lambda r: r.effective_from):
            versions.setdefault((row.provider, row.model), []).append(_as_price(row))
        self._versions = versions
        self._starts = {key: [p.effective_from for p in ps] for key, ps in versions.items()}

    @classmethod
    def load(cls) -> PriceBook:
        return cls(list(db.session.scalars(select(ModelPrice))))

    def price_at(self, provider: str, model: str, when: datetime) -> TokenPrice | None:
        key = canonical_model(provider, model)
        starts = self._starts.get(key)
        if not starts:
            return None
        index = bisect.bisect_right(starts, when) - 1
        return self._versions[key][index] if index >= 0 else None


class _CachedBook:
    """One PriceBook per process, reloaded after ``ttl`` seconds so refreshes reach workers."""

    def __init__(self, ttl: float = 60.0) -> None:
        self._ttl = ttl
        self._lock = threading.Lock()
        self._book: PriceBook | None = None
        self._loaded_at = 0.0

    def get(self) -> PriceBook:
        with self._lock:
            if self._book is None or time.monotonic() - self._loaded_at > self._ttl:
                self._book = PriceBook.load()
                self._loaded_at = time.monotonic()
            return self._book

    def invalidate(self) -> None:
        with self._lock:
            self._book = None


price_book = _CachedBook()
