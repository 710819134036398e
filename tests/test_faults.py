"""Faults with real processes: a killed worker, Redis going away, PostgreSQL restarting.

Each test prints events sent, stored, duplicated and lost; lost and duplicated
must be zero. They start real ``celery worker`` processes against the test
database and a private redis-server, so they are marked ``slow`` and ``services``.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask
from sqlalchemy import func, select

from app.config import Settings
from app.extensions import db
from app.ingest.models import UsageEvent
from app.registry import services
from tests.factories import event
from tests.helpers import SERVICE_TOKEN, auth, create_extra_app, measured, wait_for
from tests.processes import PrivatePostgres, shipped_worker

pytestmark = [pytest.mark.services, pytest.mark.slow]


def stored_counts(app: Flask, event_ids: set[str]) -> tuple[int, int]:
    """(rows whose event_id we sent, distinct such ids)."""
    with app.app_context():
        rows = db.session.execute(
            select(UsageEvent.event_id, func.count())
            .where(UsageEvent.event_id.like("fault-%"))
            .group_by(UsageEvent.event_id)
        ).all()
        db.session.rollback()
    ours = [(e, n) for e, n in rows if e in event_ids]
    return sum(n for _, n in ours), len(ours)


def assert_stored_exactly_once(name: str, app: Flask, event_ids: set[str]) -> None:
    """Report sent, stored, duplicated and lost; the last two must be zero."""
    stored, distinct = stored_counts(app, event_ids)
    sent = len(event_ids)
    measured(
        f"{name}: sent={sent} stored={stored} duplicated={stored - distinct} lost={sent - distinct}"
    )
    assert stored == distinct == sent


def _send(client, batches: int, size: int, prefix: str) -> set[str]:
    ids: set[str] = set()
    for b in range(batches):
        events = [
            event(f"fault-key-{n % 7}", event_id=f"fault-{prefix}-{b}-{n}") for n in range(size)
        ]
        resp = client.post("/v1/usage/events", json={"events": events}, headers=auth(SERVICE_TOKEN))
        assert resp.status_code == 202
        ids.update(e["event_id"] for e in events)
    return ids


def test_worker_killed_mid_batch_loses_and_duplicates_nothing(
    app: Flask, stack, tmp_path: Path
) -> None:
    producer, _, local = stack
    client = producer.test_client()
    ids = _send(client, batches=60, size=100, prefix="kill")
    services(producer).outbox.flush()
    # With the whole worker killed, nothing hands its unacknowledged batches back
    # but Redis's visibility timeout (120 s by default): shortened here, so this
    # test measures recovery, not the wait. test_soak kills a pool process and
    # restarts the worker on the defaults.
    quick = {"BROKER_VISIBILITY_TIMEOUT": "3"}
    worker = shipped_worker(local, tmp_path, **quick)
    # Kill it once it is part-way through the queue: some rows stored, not all.
    wait_for(lambda: stored_counts(app, ids)[0] >= 500, timeout=90, interval=0.01)
    worker.stop_worker(signal.SIGKILL)
    killed_at = stored_counts(app, ids)[1]
    assert killed_at < len(ids), "the worker finished before it could be killed"
    worker = shipped_worker(local, tmp_path, **quick)
    try:
        wait_for(lambda: stored_counts(app, ids)[1] == len(ids), timeout=90, interval=0.2)
    finally:
        worker.stop_worker(signal.SIGKILL)
    assert_stored_exactly_once("worker SIGKILL", app, ids)


def _run_until_recorded_and_confirmed(
    app: Flask, local: Settings, tmp_path: Path, ids: set[str]
) -> None:
    """A worker until every event is stored and the outbox has every receipt
    (only a re-send recovers what these tests take away)."""
    worker = shipped_worker(local, tmp_path)
    try:
        wait_for(lambda: stored_counts(app, ids)[1] == len(ids), timeout=90, interval=0.2)
        wait_for(lambda: not list((tmp_path / "spool").glob("sent-*.jsonl")), timeout=10)
    finally:
        worker.stop_worker()


def test_batches_redis_handed_to_a_worker_that_died_are_sent_again(
    app: Flask, stack, tmp_path: Path
) -> None:
    """Redis gives a message to a worker by popping it; a worker killed before it
    bookkeeps the message as unacknowledged loses it. The outbox keeps each batch
    until the worker's receipt is committed, and sends it again when none comes."""
    import redis

    producer, redis_server, local = stack
    ids = _send(producer.test_client(), batches=3, size=100, prefix="popped")
    services(producer).outbox.flush()
    broker = redis.Redis(port=redis_server.port)
    popped = 0
    while broker.rpop("celery") is not None:  # taken by a worker that died at once
        popped += 1
    assert popped >= 1 and list((tmp_path / "spool").glob("sent-*.jsonl"))
    _run_until_recorded_and_confirmed(app, local, tmp_path, ids)
    assert_stored_exactly_once(f"broker lost every queued message ({popped})", app, ids)


def test_batches_whose_stored_events_are_gone_are_sent_again(
    app: Flask, stack, tmp_path: Path
) -> None:
    """A batch's events wait in Redis beside a message that carries only its id
    (app/ingest/batch_store.py). If they are gone when a worker takes the message (expired,
    or Redis lost them), nothing is recorded and no receipt written, so the outbox
    sends the batch again; once recorded, its events leave Redis."""
    import redis
    from kombu.utils.json import loads as envelope

    from app.ingest import wire

    producer, redis_server, local = stack
    ids = _send(producer.test_client(), batches=3, size=100, prefix="gone")
    services(producer).outbox.flush()
    broker = redis.Redis(port=redis_server.port)
    # The outbox's thread may be between a batch's store and its message.
    wait_for(lambda: len(broker.keys("usage-billing:batch:*")) == broker.llen("celery"))
    messages = [wire.loads(envelope(m)["body"]) for m in broker.lrange("celery", 0, -1)]
    assert messages and all(args == [None] for args, _, _ in messages)  # ids only
    stored = broker.keys("usage-billing:batch:*")
    assert len(stored) == len(messages)
    broker.delete(*stored)
    _run_until_recorded_and_confirmed(app, local, tmp_path, ids)
    assert "its events are gone from the batch store" in (tmp_path / "worker.log").read_text()
    assert broker.keys("usage-billing:batch:*") == []
    assert_stored_exactly_once(f"batch store lost every batch ({len(stored)})", app, ids)


def test_redis_stopped_while_requests_keep_coming(app: Flask, stack, tmp_path: Path) -> None:
    producer, redis_server, local = stack
    client = producer.test_client()
    outbox = services(producer).outbox
    worker = shipped_worker(local, tmp_path)
    try:
        ids = _send(client, batches=5, size=50, prefix="redis-a")
        outbox.flush()
        redis_server.stop()
        ids |= _send(client, batches=5, size=50, prefix="redis-b")  # every request still succeeds
        outbox.flush()
        assert list((tmp_path / "spool").glob("seg-*.jsonl")), "events wait on disk"
        redis_server.start()
        ids |= _send(client, batches=5, size=50, prefix="redis-c")
        outbox.flush()
        wait_for(lambda: stored_counts(app, ids)[1] == len(ids), timeout=90, interval=0.2)
    finally:
        worker.stop_worker()
    assert_stored_exactly_once("redis stopped", app, ids)


@pytest.fixture()
def private_postgres() -> Iterator[PrivatePostgres]:
    server = PrivatePostgres().init()
    server.start()
    yield server
    server.stop()


def test_postgres_restarted_during_ingest(
    app: Flask, stack, private_postgres: PrivatePostgres, tmp_path: Path
) -> None:
    """A cluster of the test's own, restarted while the worker is part-way through."""
    _, _, local = stack
    local = local.replace(database_url=private_postgres.url, auto_migrate=True)
    producer = create_extra_app(local, app)  # migrates the new cluster
    client = producer.test_client()
    outbox = services(producer).outbox
    restarted: list[BaseException | None] = []

    def restart() -> None:
        try:
            private_postgres.restart()
            restarted.append(None)
        except BaseException as exc:  # re-raised below, in the test's thread
            restarted.append(exc)

    restarter = threading.Thread(target=restart)
    worker = shipped_worker(local, tmp_path)
    try:
        ids = _send(client, batches=60, size=100, prefix="pg-a")
        outbox.flush()
        # Restart while the worker is part-way through the queue.
        wait_for(lambda: stored_counts(producer, ids)[0] >= 1000, timeout=90, interval=0.01)
        restarter.start()
        ids |= _send(client, batches=20, size=100, prefix="pg-b")  # the API keeps accepting
        outbox.flush()
        restarter.join()
        if restarted != [None]:
            raise AssertionError(f"PostgreSQL did not restart: {restarted}")
        wait_for(lambda: stored_counts(producer, ids)[1] == len(ids), timeout=120, interval=0.5)
    finally:
        if restarter.ident is not None:
            restarter.join()  # never leave the cluster restarting behind a failed test
        worker.stop_worker()
        outbox.close()
    assert_stored_exactly_once("postgres restarted", producer, ids)
    assert "Retry in" in (tmp_path / "worker.log").read_text(), "no task met the outage"
