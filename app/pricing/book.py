"""The price table: seeding, the nightly refresh, and the in-process price book.

Workers price thousands of events a second, so they read prices from a
``PriceBook`` loaded from ``model_prices``, never one query per event. The book
answers "price of this model at that moment", so an event is charged the price
in force when it happened.

A refresh must reach every worker process before any event it should price:
each batch's transaction first reads the table's version (its highest id) and
reloads the book when it moved. On PostgreSQL that read holds a shared advisory
lock for the batch's transaction, and a refresh takes it exclusively before it
picks its effective time: it waits for the batches being priced, and makes its
prices effective after every event already stored, so no stored event was
charged an older price than the one in force at its timestamp.
"""

from __future__ import annotations

import bisect
import logging
import threading
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import func, select, text

from app.extensions import db
from app.pricing.catalog import (
    BUNDLED_SOURCE,
    PriceSourceError,
    bundled_prices,
    canonical_model,
    parse_price_list,
)
from app.pricing.cost import Cost, Counts, PriceRules, TokenPrice, cost_of
from app.pricing.models import ModelPrice

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


_PRICES_LOCK = 0x75627072  # "ubpr": held shared by a batch being priced, exclusively by a refresh
# The timestamp of the latest event the ledger holds (``app.ingest.ledger.latest_event_at``):
# the ledger sits above pricing, so the caller hands it in.
LatestEvent = Callable[[], datetime | None]


def _as_price(row: ModelPrice) -> TokenPrice:
    return TokenPrice(
        input=row.input_price,
        output=row.output_price,
        cache_read=row.cache_read_price,
        effective_from=row.effective_from,
        source=row.source,
        rules=row.rules,
    )


def price_row(provider: str, model: str, price: TokenPrice, effective_from: datetime) -> ModelPrice:
    """The ``model_prices`` row of a price version."""
    return ModelPrice(
        provider=provider,
        model=model,
        input_price=price.input,
        output_price=price.output,
        cache_read_price=price.cache_read,
        rules=price.rules,
        effective_from=effective_from,
        source=price.source,
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


def refresh_prices(
    latest_event: LatestEvent, source_url: str = "", now: datetime | None = None
) -> RefreshResult:
    """Add an effective-dated row wherever a price changed; touch nothing else.

    The URL source (when configured) is fetched and parsed in full before any
    write: a malformed or unreachable source raises and changes nothing. It
    takes precedence over the bundled data for the models it names.
    """
    now = now or datetime.now(UTC)
    current = _current_prices()
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
    effective_from = _effective_from(now, latest_event) if current else SEED_EFFECTIVE_FROM
    added = 0
    for (provider, model), price in incoming.items():
        known = current.get((provider, model))
        if known is not None and not price.differs_from(known):
            continue
        db.session.add(price_row(provider, model, price, effective_from))
        added += 1
    db.session.commit()
    log.info("prices refreshed", extra={"added": added, "checked": len(incoming)})
    return RefreshResult(checked=len(incoming), added=added, sources=tuple(sources))


def seed_prices(latest_event: LatestEvent) -> RefreshResult | None:
    """Seed an empty table from the bundled source; and once after migration 0004,
    add the source's whole rules (tiers, time-of-day prices) to a table that predates
    them. None when the table holds them already."""
    if db.session.scalar(select(ModelPrice.id).where(ModelPrice.rules.is_not(None)).limit(1)):
        return None
    return refresh_prices(latest_event)


def _effective_from(now: datetime, latest_event: LatestEvent) -> datetime:
    """When new prices take effect: now, or just after the latest event stored.

    On PostgreSQL this first waits, under ``_PRICES_LOCK``, for every batch being
    priced; an event stored with a later timestamp (events may be dated a few
    minutes ahead) keeps the price it was charged, and the new one starts after it.
    """
    if db.engine.dialect.name == "postgresql":
        db.session.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": _PRICES_LOCK})
    latest = latest_event()
    if latest is None or latest < now:
        return now
    return latest + timedelta(microseconds=1)


def _version() -> int:
    """The table's version for this batch: its highest id (rows are only ever added)."""
    if db.engine.dialect.name == "postgresql":
        query = text("SELECT pg_advisory_xact_lock_shared(:id), (SELECT max(id) FROM model_prices)")
        return db.session.execute(query, {"id": _PRICES_LOCK}).one()[1] or 0
    return db.session.scalar(select(func.max(ModelPrice.id))) or 0


class PriceBook:
    """Every price version in memory, keyed by canonical (provider, model)."""

    def __init__(self, rows: list[ModelPrice], version: int = 0) -> None:
        versions: dict[tuple[str, str], list[TokenPrice]] = {}
        for row in sorted(rows, key=lambda r: r.effective_from):
            versions.setdefault((row.provider, row.model), []).append(_as_price(row))
        self.version = version
        self._versions = versions
        self._starts = {key: [p.effective_from for p in ps] for key, ps in versions.items()}
        self._rules: dict[int, PriceRules] = {}

    @classmethod
    def load(cls, version: int = 0) -> PriceBook:
        return cls(list(db.session.scalars(select(ModelPrice))), version)

    def models(self) -> list[tuple[str, str]]:
        """Every (provider, model) the book has a price version for."""
        return sorted(self._versions)

    def price_at(self, provider: str, model: str, when: datetime) -> TokenPrice | None:
        key = canonical_model(provider, model)
        starts = self._starts.get(key)
        if not starts:
            return None
        index = bisect.bisect_right(starts, when) - 1
        return self._versions[key][index] if index >= 0 else None

    def cost(self, provider: str, model: str, when: datetime, counts: Counts) -> Cost | None:
        """What the call cost at ``when``; None when the model has no price then.

        ``counts`` are the call's usage by the price source's usage keys
        (``app/pricing/dimensions.py``).
        """
        price = self.price_at(provider, model, when)
        if price is None:
            return None
        if price.rules is None:
            return cost_of(counts, price)
        rules = self._rules.get(id(price))
        if rules is None:  # parsed once per price version, when first needed
            rules = self._rules[id(price)] = PriceRules.parse(price.rules)
        return rules.cost(counts, when)


class _CachedBook:
    """One PriceBook per process, reloaded whenever ``model_prices`` has a new version."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._book: PriceBook | None = None

    def get(self) -> PriceBook:
        """The book for the current transaction (a batch's); call inside it, first."""
        version = _version()
        with self._lock:
            if self._book is None or self._book.version != version:
                self._book = PriceBook.load(version)
            return self._book

    def invalidate(self) -> None:
        with self._lock:
            self._book = None


price_book = _CachedBook()
