"""The daily report's sums: the days no event can reach any more come from frozen totals,
so the report reads the recent days only, and its figures equal the whole history's."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

from flask import Flask
from sqlalchemy import func, select

from app.billing.models import FrozenUsage
from app.billing.report import cumulative_usage
from app.extensions import db
from app.ingest.models import UsageDaily
from app.security import hash_api_key
from tests.factories import CustomerFactory, event
from tests.helpers import record

TODAY = datetime.now(UTC).date()


def _old_usage(key: str, day: date, tokens: int) -> None:
    """A rollup row of a day long past (events that old are refused; their rollup stays)."""
    db.session.add(
        UsageDaily(
            api_key_hash=hash_api_key(key),
            day=day,
            provider="anthropic",
            model="claude-3-5-sonnet-20241022",
            events=1,
            unpriced_events=0,
            tokens_input=tokens,
            tokens_output=0,
            tokens_cache_read=0,
            tokens_total=tokens,
            cost_total=Decimal(tokens) * Decimal("0.000003"),
        )
    )


def _history(settings: Any, day: date) -> dict[int, Decimal]:
    """What the report used to sum: every rollup row up to ``day``."""
    from app.customers.models import ApiKey

    rows = db.session.execute(
        select(ApiKey.customer_id, func.sum(UsageDaily.tokens_total))
        .join(ApiKey, ApiKey.key_hash == UsageDaily.api_key_hash)
        .where(UsageDaily.day <= day)
        .group_by(ApiKey.customer_id)
    )
    return {customer_id: Decimal(total) for customer_id, total in rows}


def test_frozen_sums_equal_the_whole_history_and_advance_day_by_day(
    app: Flask, settings: Any, make_customer: Any
) -> None:
    first = make_customer("key-fz-1")
    second = make_customer("key-fz-2")
    yesterday = TODAY - timedelta(days=1)
    with app.app_context():
        for back in (400, 200, 60, 40, 36):
            _old_usage("key-fz-1", TODAY - timedelta(days=back), 1000 + back)
        _old_usage("key-fz-2", TODAY - timedelta(days=100), 7)
        db.session.commit()
        at = datetime(yesterday.year, yesterday.month, yesterday.day, 12, tzinfo=UTC)
        record([event("key-fz-1", timestamp=at.isoformat(), tokens_input=5, tokens_output=0)])
        got = cumulative_usage(settings, yesterday)
        assert got == _history(settings, yesterday)
        closed = TODAY - timedelta(days=settings.max_event_age_days + 2)
        rows = {r.customer_id: r for r in db.session.scalars(select(FrozenUsage))}
        assert {r.through_day for r in rows.values()} == {closed}
        assert rows[first.id].tokens_total == 1400 + 1200 + 1060 + 1040  # not 1036: still open
        assert rows[second.id].tokens_total == 7
        db.session.commit()
        # The next day: one more day is closed and added; the figures still agree.
        later = cumulative_usage(settings, TODAY, today=TODAY + timedelta(days=1))
        assert later == _history(settings, TODAY)
        assert (
            db.session.get(FrozenUsage, first.id).tokens_total == 1400 + 1200 + 1060 + 1040 + 1036
        )
        db.session.commit()  # as the report does: SQLite has one writer at a time
        # A customer added later is frozen alone, from its own history.
        third = make_customer("key-fz-3")
        _old_usage("key-fz-3", TODAY - timedelta(days=90), 11)
        db.session.commit()
        assert cumulative_usage(settings, yesterday)[third.id] == 11
        # A report re-run for a day before the frozen sums sums the history itself.
        long_ago = TODAY - timedelta(days=150)
        assert cumulative_usage(settings, long_ago) == _history(settings, long_ago)
        db.session.rollback()


def test_frozen_sums_on_the_embedded_default(sqlite_app: Flask) -> None:
    """The same statements on SQLite (``UPDATE … FROM``): frozen, advanced, still equal."""
    settings = sqlite_app.config["SETTINGS"]
    yesterday = TODAY - timedelta(days=1)
    with sqlite_app.app_context():
        customer = CustomerFactory(api_key="key-fz-sqlite")
        for back in (300, 50, 38):
            _old_usage("key-fz-sqlite", TODAY - timedelta(days=back), 100 + back)
        db.session.commit()
        assert cumulative_usage(settings, yesterday) == _history(settings, yesterday)
        db.session.commit()
        later = cumulative_usage(settings, TODAY, today=TODAY + timedelta(days=1))
        assert later == _history(settings, TODAY) == {customer.id: Decimal(400 + 150 + 138)}
        frozen = db.session.get(FrozenUsage, customer.id)
        assert (frozen.through_day, frozen.tokens_total) == (
            TODAY + timedelta(days=1) - timedelta(days=settings.max_event_age_days + 2),
            400 + 150 + 138,
        )
        db.session.rollback()
