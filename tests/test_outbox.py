"""The spool outbox shared by several processes (gunicorn workers) in one directory."""

from __future__ import annotations

import logging
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from app.metering.outbox import Outbox


def test_writers_and_replayers_on_one_spool_publish_each_event_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Replaying outboxes never take a live writer's fresh segment.

    Each gunicorn worker has its own outbox on the same spool directory and
    replays segments no one holds. A segment must be locked from the moment it
    is visible; otherwise a replayer can take (and delete) a segment its writer
    is still filling.
    """
    published: Counter[str] = Counter()
    lock = threading.Lock()

    def publish(events: list[dict[str, Any]]) -> None:
        with lock:
            published.update(e["event_id"] for e in events)

    writers = [Outbox(tmp_path, publish, batch_size=5, flush_ms=100_000) for _ in range(2)]
    replayer = Outbox(tmp_path, publish, batch_size=5, flush_ms=100_000)
    stop = threading.Event()

    def replay_forever() -> None:
        while not stop.is_set():
            replayer._replay_due = 0.0
            replayer._replay()

    def write(n: int, outbox: Outbox) -> None:
        for i in range(1500):
            outbox.append([{"event_id": f"w{n}-{i}"}])
            outbox._flush()

    caplog.set_level(logging.WARNING, logger="usage_billing.metering")
    threads = [threading.Thread(target=replay_forever) for _ in range(2)]
    threads += [threading.Thread(target=write, args=(n, o)) for n, o in enumerate(writers)]
    for t in threads:
        t.start()
    for t in threads[2:]:
        t.join()
    stop.set()
    for t in threads[:2]:
        t.join()
    for outbox in writers:
        outbox.close()

    duplicated = sum(c - 1 for c in published.values() if c > 1)
    lost = 3000 - len(published)
    print(f"outbox race: sent 3000, published {len(published)}, duplicated {duplicated}, lost {lost}")
    assert (lost, duplicated) == (0, 0)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert sorted(p.name for p in tmp_path.iterdir()) == []
