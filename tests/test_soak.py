"""The stack as shipped, under concurrent load, while its worker and Redis restart.

``make worker`` and ``make api`` with their default settings (migrations at
start-up, a prefork worker, gunicorn), six clients posting batches at once, and
meanwhile: a pool process killed, the worker restarted twice, Redis stopped and
started twice. At the end every acknowledged event is stored exactly once,
counted once in the rollup, and none is parked. Bounded: about a minute of load.
"""

from __future__ import annotations

import os
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, text

from app.config import Settings, with_driver
from tests.factories import event
from tests.helpers import create_database, drop_database, measured, wait_for
from tests.processes import RedisServer, ShippedStack, free_port

pytestmark = [pytest.mark.services, pytest.mark.slow]

CLIENTS = 6
BATCH = 100
LOAD_SECONDS = 60
PAUSE = 0.05  # seconds between a client's batches


@pytest.fixture()
def shipped(tmp_path: Path) -> Iterator[tuple[ShippedStack, RedisServer, Engine]]:
    url = create_database()
    redis_server = RedisServer(free_port(), tmp_path)
    redis_server.start()
    stack = ShippedStack(url, f"redis://127.0.0.1:{redis_server.port}/0", tmp_path)
    engine = create_engine(with_driver(url))
    try:
        stack.start_worker()
        stack.start_api()
        yield stack, redis_server, engine
    finally:
        stack.stop()
        redis_server.stop()
        engine.dispose()
        drop_database(url)


class Clients:
    """Threads posting batches until told to stop; every acknowledged event id kept."""

    def __init__(self, stack: ShippedStack) -> None:
        self.stack = stack
        self.accepted: set[str] = set()
        self.errors: list[str] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(n,)) for n in range(CLIENTS)]

    def _run(self, client: int) -> None:
        deadline = time.monotonic() + LOAD_SECONDS + 30  # bounded even if never told
        while not self._stop.is_set() and time.monotonic() < deadline:
            batch = [
                event(f"soak-key-{client}-{n % 3}", event_id=f"soak-{uuid.uuid4().hex}")
                for n in range(BATCH)
            ]
            batch[0]["tokens_input"] = -1  # the API refuses it: never acknowledged
            try:
                accepted = self.stack.post_events(batch)
            except OSError as exc:  # not acknowledged, so not owed
                with self._lock:
                    self.errors.append(repr(exc))
                continue
            with self._lock:
                self.accepted.update(accepted)
            time.sleep(PAUSE)  # a steady load, not a flood the backlog needs minutes to drain

    def __enter__(self) -> Clients:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()


def _at(start: float, second: float, action: Callable[[], None]) -> None:
    time.sleep(max(0.0, start + second - time.monotonic()))
    action()


def test_restarts_of_worker_and_redis_under_load_lose_and_duplicate_nothing(shipped) -> None:
    stack, redis_server, engine = shipped

    def kill_a_pool_process() -> None:
        pool = stack.pool_processes()
        assert pool, "the prefork worker has no pool processes"
        os.kill(pool[0], signal.SIGKILL)  # as the OOM killer would

    def restart_worker() -> None:
        stack.stop_worker(signal.SIGTERM)
        stack.start_worker()

    def restart_redis() -> None:
        redis_server.stop()
        time.sleep(4)
        redis_server.start()

    with Clients(stack) as clients:
        start = time.monotonic()
        _at(start, 8, kill_a_pool_process)
        _at(start, 16, restart_worker)
        _at(start, 26, restart_redis)
        _at(start, 38, restart_worker)
        _at(start, 46, restart_redis)
        _at(start, LOAD_SECONDS, lambda: None)
    accepted = clients.accepted
    assert len(accepted) > 10_000, "the load was too light to prove anything"

    def rows() -> int:
        with engine.connect() as conn:
            return conn.execute(text("SELECT count(*) FROM usage_events")).scalar_one()

    # Only this test writes to its database: wait for as many rows as acknowledged
    # events, then compare the ids themselves. The bound is the documented one: a
    # message Redis handed to a worker as its connection broke is gone, and its
    # batch is published again once it has had no receipt for this long.
    defaults = Settings()
    bound = defaults.meter_redeliver_after_seconds + defaults.broker_visibility_timeout + 60
    load_ended = time.monotonic()
    wait_for(lambda: rows() >= len(accepted), timeout=bound, interval=1)
    recovered = time.monotonic() - load_ended
    with engine.connect() as conn:
        stored_ids = list(conn.execute(text("SELECT event_id FROM usage_events")).scalars())
        tokens = conn.execute(text("SELECT sum(tokens_total) FROM usage_events")).scalar_one()
        rolled_events, rolled_tokens = conn.execute(
            text("SELECT sum(events), sum(tokens_total) FROM usage_daily")
        ).one()
        hourly = conn.execute(text("SELECT sum(events), sum(tokens_total) FROM usage_hourly")).one()
        parked = conn.execute(text("SELECT count(*) FROM rejected_events")).scalar_one()
    stored = set(stored_ids)
    measured(
        f"soak (make api + make worker, {CLIENTS} clients, {LOAD_SECONDS} s, pool process "
        f"killed, worker restarted 2x, Redis restarted 2x): acknowledged={len(accepted)} "
        f"stored={len(stored_ids)} duplicated={len(stored_ids) - len(stored)} "
        f"lost={len(accepted - stored)} parked={parked} rollup_events={rolled_events} "
        f"client_errors={len(clients.errors)} all stored {recovered:.0f} s after the load"
    )
    assert not accepted - stored, "acknowledged events are missing"
    assert len(stored_ids) == len(stored), "an event is stored twice"
    # Events posted while a response was lost are stored though not acknowledged.
    assert stored - accepted == set() or clients.errors
    assert (rolled_events, rolled_tokens) == (len(stored_ids), tokens), "the rollup double-counted"
    assert tuple(hourly) == (len(stored_ids), tokens), "the hourly rollup is off"
    assert parked == 0
    assert stack.worker is not None and stack.worker.poll() is None, "the worker died"
