"""Scale-out: two API hosts, each with its own spool, and two worker hosts, against one
Redis and one PostgreSQL, under concurrent load; every acknowledged event is counted.

Each "host" is ``make api`` and ``make worker`` as the README starts them, with an
instance directory (and so a spool and metrics) of its own, as docs/deploy.md
describes a deployment past one machine.
"""

from __future__ import annotations

import threading
import uuid
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from app.config import with_driver
from tests.factories import event
from tests.helpers import create_database, drop_database, measured, scrape, wait_for
from tests.processes import RedisServer, ShippedStack, free_port

pytestmark = [pytest.mark.services, pytest.mark.slow]

CLIENTS_PER_API = 3
BATCHES_PER_CLIENT = 40
BATCH = 100


def test_two_api_hosts_and_two_worker_hosts_store_every_event_once(tmp_path: Path) -> None:
    url = create_database()
    redis_server = RedisServer(free_port(), tmp_path)
    redis_server.start()
    redis_url = f"redis://127.0.0.1:{redis_server.port}/0"
    hosts = [ShippedStack(url, redis_url, tmp_path / f"host-{n}") for n in range(2)]
    engine = create_engine(with_driver(url))
    accepted: set[str] = set()
    lock = threading.Lock()
    errors: list[str] = []

    def client(host: ShippedStack, n: int) -> None:
        for b in range(BATCHES_PER_CLIENT):
            batch = [
                event(f"scale-key-{n}-{i % 5}", event_id=f"scale-{uuid.uuid4().hex}")
                for i in range(BATCH)
            ]
            try:
                ids = host.post_events(batch)
            except OSError as exc:
                errors.append(f"{host.port} batch {b}: {exc}")
                continue
            with lock:
                accepted.update(ids)

    try:
        for host in hosts:
            host.workdir.mkdir(parents=True)
            host.start_worker()
            host.start_api()
        threads = [
            threading.Thread(target=client, args=(host, n))
            for host in hosts
            for n in range(CLIENTS_PER_API)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        sent = len(hosts) * CLIENTS_PER_API * BATCHES_PER_CLIENT * BATCH

        def stored() -> int:
            with engine.connect() as conn:
                return conn.execute(text("SELECT count(*) FROM usage_events")).scalar_one()

        wait_for(lambda: stored() >= len(accepted), timeout=180, interval=1)
        with engine.connect() as conn:
            ids = list(conn.execute(text("SELECT event_id FROM usage_events")).scalars())
        # Each host's spool empties once the receipts of its batches are seen.
        wait_for(lambda: not any(_spooled(host) for host in hosts), timeout=60, interval=1)
        by_worker = [_batches_recorded(host) for host in hosts]
    finally:
        for host in hosts:
            host.stop()
        redis_server.stop()
        engine.dispose()
        drop_database(url)
    measured(
        f"scale-out (2 x make api with own spools, 2 x make worker, one Redis and PostgreSQL, "
        f"{len(hosts) * CLIENTS_PER_API} clients): sent={sent} acknowledged={len(accepted)} "
        f"stored={len(ids)} duplicated={len(ids) - len(set(ids))} "
        f"lost={len(accepted - set(ids))} batches per worker={by_worker} errors={len(errors)}"
    )
    assert not errors and len(accepted) == sent
    assert set(ids) == accepted and len(ids) == len(set(ids))
    assert all(batches > 0 for batches in by_worker)  # both worker hosts took batches


def _spooled(host: ShippedStack) -> list[Path]:
    """Segments holding events not confirmed recorded (an open segment is empty)."""
    spool = host.workdir / "instance" / "spool"
    held = []
    for path in [*spool.glob("seg-*.jsonl"), *spool.glob("sent-*.jsonl")]:
        try:
            if path.name.startswith("sent-") or path.stat().st_size:
                held.append(path)
        except FileNotFoundError:  # confirmed and deleted meanwhile
            continue
    return held


def _batches_recorded(host: ShippedStack) -> float:
    """What the host's worker says it committed (its metrics port)."""
    return scrape(host.worker_metrics_port).get(("ub_batches_recorded_total", ()), 0.0)
