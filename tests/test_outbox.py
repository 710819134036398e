"""The spool outbox: several processes on one spool, and the wait for receipts."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from app.ingest.outbox import Outbox
from tests.helpers import measured


class FakeBroker:
    """Publishes into a list; a test decides what a worker records and what it loses."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.published: list[tuple[str, list[dict[str, Any]]]] = []
        self.recorded: set[str] = set()
        self.accepted: dict[str, float | None] = {}  # each batch's acceptance, as last sent
        self.depth = 0
        self.lose_next = 0

    def publish(
        self, batch_id: str, events: list[dict[str, Any]], accepted_at: float | None = None
    ) -> None:
        with self.lock:
            self.published.append((batch_id, events))
            self.accepted[batch_id] = accepted_at
            if self.lose_next:
                self.lose_next -= 1  # taken off the queue by a worker that then died
            else:
                self.recorded.add(batch_id)

    def receipts(self, batch_ids: list[str]) -> set[str]:
        with self.lock:
            return self.recorded & set(batch_ids)

    def outbox(self, directory: Path, **overrides: Any) -> Outbox:
        options: dict[str, Any] = {"batch_size": 5, "flush_ms": 100_000, "redeliver_after": 60}
        options.update(overrides)
        return Outbox(directory, self.publish, self.receipts, lambda: self.depth, **options)

    def event_counts(self) -> Counter[str]:
        return Counter(e["event_id"] for _, events in self.published for e in events)


def test_writers_and_replayers_on_one_spool_publish_each_event_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Replaying outboxes never take a live writer's fresh segment.

    Each gunicorn worker has its own outbox on the same spool directory and
    replays segments no one holds. A segment must be locked from the moment it
    is visible; otherwise a replayer can take (and delete) a segment its writer
    is still filling.
    """
    broker = FakeBroker()
    writers = [broker.outbox(tmp_path) for _ in range(2)]
    replayer = broker.outbox(tmp_path)
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
    replayer.flush()  # every chunk has its receipt: the sent segments go

    published = broker.event_counts()
    duplicated = sum(c - 1 for c in published.values() if c > 1)
    lost = 3000 - len(published)
    measured(
        f"outbox race: sent=3000 published={len(published)} duplicated={duplicated} lost={lost}"
    )
    assert (lost, duplicated) == (0, 0)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def _age(directory: Path, seconds: float) -> None:
    for path in directory.glob("sent-*.jsonl"):
        past = time.time() - seconds
        os.utime(path, (past, past))


def test_a_batch_the_broker_lost_is_sent_again_until_it_is_recorded(tmp_path: Path) -> None:
    broker = FakeBroker()
    outbox = broker.outbox(tmp_path, redeliver_after=30)
    before = time.time()
    outbox.append([{"event_id": f"e{i}"} for i in range(12)])  # chunks of 5, 5, 2
    broker.lose_next = 1
    outbox.flush()
    [first_lost] = [b for b, _ in broker.published if b not in broker.recorded]
    # Each chunk says when the API took its first event: the lag runs from there.
    [accepted] = set(broker.accepted.values())
    assert accepted is not None and before <= accepted <= time.time()
    [waiting] = tmp_path.glob("sent-*.jsonl")
    assert waiting.name.endswith("-3.jsonl") and len(broker.published) == 3

    outbox.flush()  # not overdue yet: nothing re-sent, the segment waits
    assert len(broker.published) == 3 and waiting.exists()

    _age(tmp_path, 31)
    broker.depth = 4  # the queue has a backlog: the batch may just be waiting its turn
    outbox.flush()
    assert len(broker.published) == 3 and waiting.exists()

    broker.depth = 0
    outbox.flush()  # overdue and the queue is empty: only the lost chunk goes again
    assert [b for b, _ in broker.published[3:]] == [first_lost]
    # Re-sent: accepted no later than its last publication (31 s ago), the wait counted.
    assert broker.accepted[first_lost] is not None
    assert broker.accepted[first_lost] <= before - 30
    assert waiting.exists()  # until the next check finds its receipt
    outbox.flush()
    assert not list(tmp_path.glob("sent-*.jsonl"))
    twice = {e["event_id"] for e in dict(broker.published)[first_lost]}
    assert broker.event_counts() == {f"e{i}": 1 + (f"e{i}" in twice) for i in range(12)}
    outbox.close()


def test_a_dead_process_segments_are_replayed_and_confirmed_by_another(tmp_path: Path) -> None:
    broker = FakeBroker()
    # What a killed API process leaves: one segment never published, one published
    # whose receipt never came.
    (tmp_path / "seg-999999-aaaa.jsonl").write_text(
        '{"event_id": "a1"}\n{"event_id": "a2"}\n{"torn'
    )
    (tmp_path / "sent-bbbb-1.jsonl").write_text('{"event_id": "b1"}\n')
    _age(tmp_path, 120)
    survivor = broker.outbox(tmp_path, redeliver_after=60)
    survivor.flush()
    assert sorted(broker.published) == [
        ("aaaa-0", [{"event_id": "a1"}, {"event_id": "a2"}]),
        ("bbbb-0", [{"event_id": "b1"}]),
    ]
    assert broker.accepted["aaaa-0"] is None  # a dead process's: when is not known
    survivor.flush()
    assert not list(tmp_path.glob("*.jsonl"))


def test_receipts_unavailable_keep_the_segments(tmp_path: Path) -> None:
    broker = FakeBroker()

    def database_down(batch_ids: list[str]) -> set[str]:
        raise ConnectionError("database down")

    outbox = Outbox(tmp_path, broker.publish, database_down, lambda: 0, 5, 100_000, 0)
    outbox.append([{"event_id": "x"}])
    outbox.flush()
    outbox.flush()
    assert len(broker.published) == 1  # no receipt check, so no blind re-send either
    assert len(list(tmp_path.glob("sent-*.jsonl"))) == 1
    outbox.close()


def test_flush_returns_only_once_the_threads_publish_in_flight_is_sent(tmp_path: Path) -> None:
    """``flush()`` found nothing pending while the outbox's thread was still sending
    what it had taken, and returned at once: a fault test then found the broker's
    queue empty and failed on CI."""
    broker = FakeBroker()
    sending = threading.Event()

    def slow(batch_id: str, events: list[dict[str, Any]], accepted_at: float | None = None) -> None:
        sending.set()
        time.sleep(0.5)
        broker.publish(batch_id, events, accepted_at)

    outbox = Outbox(tmp_path, slow, broker.receipts, lambda: 0, 5, 100_000, 60)
    events = [{"event_id": f"in-flight-{i}"} for i in range(5)]
    outbox.append(events)  # a full batch: the thread takes it at once
    assert sending.wait(5)
    outbox.flush()
    assert broker.event_counts() == Counter(e["event_id"] for e in events)
    outbox.close()
