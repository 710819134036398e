"""The partitioned ledger (PostgreSQL): weeks made ahead, one event id stored once across
weeks, the id table trimmed, and an existing deployment's table converted by its
migration (and back)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from flask import Flask
from flask_migrate import downgrade, upgrade
from sqlalchemy import create_engine, func, select, text
from sqlalchemy.exc import OperationalError

from app.config import Settings, with_driver
from app.database import MIGRATIONS_DIR
from app.extensions import db
from app.ingest.models import UsageEventId
from app.ingest.partitions import (
    WEEK,
    Partition,
    create_partitions,
    detach_pending,
    drop_partition,
    make_partitions,
    partitions,
    week_of,
)
from app.ingest.retention import Pace, delete_ids_before
from app.jobs.definitions import run_cleanup
from app.jobs.timetable import PARTITIONS_TASK
from app.security import hash_api_key
from tests.factories import event
from tests.helpers import (
    count_events,
    deployment_at,
    record,
    wait_for,
)

pytestmark = pytest.mark.services


def _attached(app: Flask) -> list[Partition]:
    with app.app_context():
        found = partitions(db.session.connection())
        db.session.rollback()
        return found


def test_start_up_makes_the_accepted_window_and_the_weeks_ahead(app: Flask) -> None:
    """The app fixture started as every process does (migrations, then partitions):
    every week from the oldest an event may carry to four weeks ahead is attached."""
    settings = app.config["SETTINGS"]
    now = datetime.now(UTC)
    attached = set(_attached(app))
    first = week_of(now - timedelta(days=settings.max_event_age_days + 1))
    wanted = {first + n * WEEK for n in range((week_of(now) - first) // WEEK + 5)}
    assert {Partition(week) for week in wanted} <= attached


def test_the_daily_job_makes_new_weeks_ahead_and_is_idempotent(app: Flask) -> None:
    schedule = app.extensions["celery"].conf.beat_schedule["daily-ledger-partitions"]
    assert schedule["task"] == PARTITIONS_TASK
    later = datetime.now(UTC) + 10 * WEEK
    with app.app_context():
        made = make_partitions(app.config["SETTINGS"], later)
        again = make_partitions(app.config["SETTINGS"], later)
    assert Partition(week_of(later + 4 * WEEK)).name in made and again == []
    assert Partition(week_of(later + 4 * WEEK)) in _attached(app)


def test_a_batch_for_a_week_with_no_partition_makes_it_and_is_stored(app: Flask) -> None:
    """An event of a week nobody made ahead (a batch recorded with an old clock)."""
    at = datetime.now(UTC) - timedelta(days=300)
    sent = event("key-old-week", timestamp=at.isoformat())
    with app.app_context():
        assert record([sent], now=at).inserted == 1
    assert Partition(week_of(at)) in _attached(app)
    assert count_events(app, event_id=sent["event_id"]) == 1


def test_one_event_id_is_stored_once_across_partitions(app: Flask) -> None:
    """The same id with timestamps three weeks apart, in two batches and in one of
    many: the second copy is a duplicate, whichever week it names."""
    now = datetime.now(UTC)
    first = event("key-dedupe", timestamp=(now - timedelta(minutes=5)).isoformat())
    again = dict(first, timestamp=(now - timedelta(days=21)).isoformat())
    assert week_of(now - timedelta(minutes=5)) != week_of(now - timedelta(days=21))
    with app.app_context():
        assert record([first]).inserted == 1
        result = record([again, *(event("key-dedupe") for _ in range(9))])
        rows = db.session.scalars(
            select(UsageEventId.created_at).where(UsageEventId.event_id == first["event_id"])
        ).all()
    assert (result.inserted, result.duplicates) == (9, 1)
    assert count_events(app, event_id=first["event_id"]) == 1
    assert rows == [datetime.fromisoformat(first["timestamp"])]


def test_a_batchs_statements_are_prepared_once_per_connection_and_outlive_a_rollback(
    app: Flask,
) -> None:
    """The ledger prepares its batch statements once per connection. The first batch
    on a connection rolled back (its staging table with it): the next still records
    each event once and rolls it up once, on the same statements."""
    from app.ingest.ledger import staging_cursor
    from app.ingest.models import UsageDaily

    prepared = text("SELECT name FROM pg_prepared_statements WHERE name LIKE 'ub_ledger_%'")
    with app.app_context():
        db.engine.dispose()  # a connection of its own
        staging_cursor(db.session.connection())
        db.session.rollback()
        names = sorted(db.session.scalars(prepared))
        assert names == [
            "ub_ledger_append",
            "ub_ledger_claim",
            "ub_ledger_daily",
            "ub_ledger_hourly",
        ]
        sent = [event("key-prepared") for _ in range(3)]
        assert record(sent[:2]).inserted == 2
        assert record(sent).inserted == 1  # the merge, for a batch holding a stored event
        assert record([event("key-prepared")]).inserted == 1
        assert sorted(db.session.scalars(prepared)) == names  # prepared once
        daily = db.session.scalar(
            select(func.sum(UsageDaily.events)).where(
                UsageDaily.api_key_hash == hash_api_key("key-prepared")
            )
        )
        db.session.rollback()
    assert daily == 4 and count_events(app, api_key_hash=hash_api_key("key-prepared")) == 4


def test_the_duplicate_check_takes_the_id_index_before_any_statistics(app: Flask) -> None:
    """The API's check of a batch's ids, planned on quick_read()'s engine as it runs,
    on an id table autovacuum has not analyzed yet (truncated, as after a new
    install): an index lookup, not a scan of every stored id per batch (the profile
    found the planner scanning, from the rows it guessed by width)."""
    from app.database import quick_read
    from app.ingest.accept import _stored_ids

    with app.app_context():
        db.session.execute(
            text(
                "INSERT INTO usage_event_ids (event_id, created_at)"
                " SELECT 'evt-' || md5(g::text), now() FROM generate_series(1, 30000) g"
            )
        )
        db.session.commit()
        reltuples = db.session.scalar(
            text("SELECT reltuples FROM pg_class WHERE relname = 'usage_event_ids'")
        )
        ids = [f"new-{n}" for n in range(100)]
        with quick_read() as conn:
            plan = conn.scalars(
                text(
                    "EXPLAIN SELECT event_id FROM usage_event_ids"
                    " WHERE event_id = ANY(string_to_array(:ids, ','))"
                ),
                {"ids": ",".join(ids)},
            ).all()
            found = set(conn.scalars(_stored_ids("postgresql"), {"ids": ids}))
    assert reltuples == -1  # never analyzed: what the planner saw when it scanned
    assert not any("Seq Scan" in line for line in plan), plan
    assert found == set()


def test_ids_are_trimmed_past_the_accepted_window_only(app: Flask) -> None:
    settings = app.config["SETTINGS"]
    now = datetime.now(UTC)
    old = now - timedelta(days=settings.max_event_age_days + 3)
    stale, recent = event("key-trim", timestamp=old.isoformat()), event("key-trim")
    with app.app_context():
        record([stale], now=old)
        record([recent])
        trimmed = delete_ids_before(
            now - timedelta(days=settings.max_event_age_days + 1), Pace(1, duty_cycle=1.0)
        )
        ours = UsageEventId.event_id.in_([stale["event_id"], recent["event_id"]])
        left = db.session.scalars(select(UsageEventId.event_id).where(ours)).all()
    assert trimmed == 1 and left == [recent["event_id"]]


def test_cleanup_never_drops_a_week_an_accepted_event_can_still_reach(
    app: Flask, make_customer
) -> None:
    """Retention shorter than the accepted age window: the weeks inside the window stay."""
    make_customer("key-short", stripe_customer_id="cus_short")
    settings = app.config["SETTINGS"].replace(usage_retention_days=7)
    now = datetime.now(UTC)
    with app.app_context():
        record([event("key-short", timestamp=(now - timedelta(days=20)).isoformat())])
        run = run_cleanup(settings, now)
        assert run.status == "succeeded", run.error
        dropped = run.counts["partitions_dropped"]
    inside = week_of(now - timedelta(days=settings.max_event_age_days + 1))
    assert all(Partition.named(name).end <= inside for name in dropped)
    assert Partition(week_of(now - timedelta(days=20))) in _attached(app)


@pytest.fixture
def old_deployment(app: Flask, settings: Settings) -> Iterator[Flask]:
    """A database migrated to 0009: the plain ledger an existing deployment has."""
    with deployment_at("0009", settings, app) as old:
        yield old


_INSERT = text(
    "INSERT INTO usage_events (event_id, api_key_hash, tokens_input, tokens_output,"
    " tokens_cache_read, tokens_total, provider, model, status, pricing_status, created_at,"
    " received_at) VALUES (:id, 'h', 1, 2, 0, 3, 'openai', 'gpt-4o', 'success', 'priced',"
    " :at, :at) RETURNING id"
)
# How usage_events is partitioned: 'r' (range), None for a plain table.
_STRATEGY = text(
    "SELECT partstrat FROM pg_partitioned_table WHERE partrelid = 'usage_events'::regclass"
)


def test_the_migration_converts_a_plain_ledger_and_back(old_deployment: Flask) -> None:
    now = datetime.now(UTC)
    stamps = [now - timedelta(days=d) for d in (200, 60, 20, 1)]
    engine = create_engine(with_driver(old_deployment.config["SETTINGS"].database_url))
    with engine.begin() as conn:
        assert conn.execute(_STRATEGY).scalar() is None
        for n, at in enumerate(stamps):
            conn.execute(_INSERT, {"id": f"old-{n}", "at": at})
    with old_deployment.app_context():
        upgrade(directory=MIGRATIONS_DIR)
        attached = set(partitions(db.session.connection()))
        db.session.rollback()
    with engine.begin() as conn:
        kind = conn.execute(_STRATEGY).scalar()
        moved = conn.execute(text("SELECT event_id, created_at FROM usage_events ORDER BY id"))
        ids = conn.execute(text("SELECT event_id FROM usage_event_ids ORDER BY 1")).scalars()
        next_id = conn.execute(_INSERT, {"id": "new", "at": now}).scalar()
        assert kind == "r"
        assert [tuple(row) for row in moved] == [(f"old-{n}", at) for n, at in enumerate(stamps)]
        # Ids kept for the events a copy of which could still be accepted.
        assert list(ids) == ["old-2", "old-3"]
    assert next_id == 5
    assert {Partition(week_of(at)) for at in stamps} <= attached
    assert Partition(week_of(now + 4 * WEEK)) in attached

    with old_deployment.app_context():
        downgrade(directory=MIGRATIONS_DIR, revision="0009")
    with engine.begin() as conn:
        # Plain again, with every row and its unique event id.
        plain = conn.execute(
            text(
                f"SELECT ({_STRATEGY.text}), (SELECT count(*) FROM usage_events),"
                " (SELECT count(*) FROM pg_constraint"
                "  WHERE conrelid = 'usage_events'::regclass AND contype = 'u')"
            )
        ).one()
    engine.dispose()
    assert tuple(plain) == (None, 5, 1)


def test_a_detach_interrupted_half_way_is_finished_by_the_next_drop(app: Flask) -> None:
    """``DETACH … CONCURRENTLY`` cancelled while it waits for an older reader leaves the
    week pending; the next drop finishes it (``FINALIZE``) and drops the table."""
    part = Partition(week_of(datetime.now(UTC) - timedelta(days=700)))
    with app.app_context():
        with db.engine.begin() as conn:
            create_partitions(conn, [part.start])
        reader = db.engine.connect()
        reader.begin()
        reader.execute(text("SELECT count(*) FROM usage_events"))  # an older reader
        detacher = db.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        pid = detacher.execute(text("SELECT pg_backend_pid()")).scalar()
        failed: list[Exception] = []

        def detach() -> None:
            try:
                detacher.execute(
                    text(f"ALTER TABLE usage_events DETACH PARTITION {part.name} CONCURRENTLY")
                )
            except OperationalError as exc:  # cancelled
                failed.append(exc)

        thread = threading.Thread(target=detach)
        thread.start()
        with db.engine.connect() as conn:
            wait_for(lambda: part in detach_pending(conn))
            conn.execute(text("SELECT pg_cancel_backend(:pid)"), {"pid": pid})
        thread.join(10)
        reader.rollback()
        reader.close()
        detacher.close()
        assert failed and "canceling statement" in str(failed[0])
        with db.engine.connect() as conn:
            assert part in detach_pending(conn) and part not in partitions(conn)
        drop_partition(part)
        with db.engine.connect() as conn:
            left = conn.execute(text("SELECT to_regclass(:name)"), {"name": part.name}).scalar()
            assert part not in detach_pending(conn) and left is None


def test_a_week_seen_in_another_database_is_still_made_in_this_one(
    app: Flask, old_deployment: Flask
) -> None:
    """One process, two databases (a migration run for another, or a test session): a
    week attached in one is not taken as attached in the other."""
    at = datetime.now(UTC) - timedelta(days=2000)  # a week no other test makes
    assert Partition(week_of(at)) not in _attached(app)
    with old_deployment.app_context():
        upgrade(directory=MIGRATIONS_DIR)
        with db.engine.begin() as conn:
            create_partitions(conn, [week_of(at)])
    with app.app_context():
        assert record([event("key-two-dbs", timestamp=at.isoformat())], now=at).inserted == 1
