"""A durable, batching hand-off from request threads to Celery, confirmed end to end.

Publishing one Celery message per request costs most of the API's capacity (a
bare view under gunicorn served ~6,500 requests/s here, ~1,200 with one
``delay()`` per request), so a request only appends its event to an append-only
segment file (one ``write`` to the OS, no fsync, no network) and to an
in-memory batch. A background thread publishes one Celery task per chunk of
``batch_size`` events (every ``batch_size`` events or ``flush_ms``).

A segment lives on disk until a worker has *recorded* it, not merely until the
broker took it: Redis hands a message to a worker by popping it, so a worker
killed between that pop and its bookkeeping loses the message. Each chunk
carries a batch id (segment id + chunk number); the worker writes a receipt for
it in the same transaction as its events. So a segment goes through:

``seg-<pid>-<id>.jsonl``
    being written, or not yet published (the broker was down). Replayed by
    whichever process finds it unlocked: ours after a failure, or a dead one's.
``sent-<id>-<chunks>.jsonl``
    published; deleted once every chunk has a receipt. A chunk with no receipt
    ``redeliver_after`` seconds after its last publication is published again
    (when the queue is empty, so it is not merely waiting its turn).

Delivery is at least once; the worker skips a batch that has a receipt and
inserts events by ``event_id``, so storage is exactly once.
"""

from __future__ import annotations

import atexit
import fcntl
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

from app.ingest import wire

log = logging.getLogger("usage_billing.metering")

Events = list[dict[str, Any]]
# (batch id, events, when the API accepted the first of them: unix time, None when
# unknown, as for a segment replayed from disk)
Publish = Callable[[str, Events, float | None], None]
Recorded = Callable[[list[str]], set[str]]  # which of these batch ids have a receipt
QueueDepth = Callable[[], int]
_MAX_REPLAY_BACKOFF = 30.0
_REPLAY_SCAN_INTERVAL = 5.0  # how often to look for a dead process's segments
_CONFIRM_INTERVAL = 1.0
_CONFIRM_PAGE = 500  # sent segments per receipt query


@contextmanager
def _locked(path: Path) -> Iterator[BinaryIO | None]:
    """The open, exclusively locked file; None when another process holds it or it moved on."""
    try:
        handle = open(path, "rb")  # noqa: SIM115
    except FileNotFoundError:
        yield None
        return
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield None  # a live writer or another replayer has it
            return
        try:  # still under this name? (not published and renamed, or deleted, meanwhile)
            current = os.path.samestat(os.fstat(handle.fileno()), os.stat(path))
        except FileNotFoundError:
            current = False
        yield handle if current else None


def _segment_id(path: Path) -> str:
    """The id in ``seg-<pid>-<id>.jsonl`` (its batches are ``<id>-<n>``)."""
    return path.stem.rsplit("-", 1)[-1]


def _sent_parts(path: Path) -> tuple[str, list[str]]:
    """The segment id and batch ids of ``sent-<id>-<chunks>.jsonl``."""
    _, segment_id, chunks = path.stem.split("-")
    return segment_id, [f"{segment_id}-{n}" for n in range(int(chunks))]


def _read_events(handle: BinaryIO, name: str) -> Events:
    events = []
    for number, line in enumerate(handle, 1):
        try:
            events.append(wire.loads(line))
        except ValueError:
            log.error("torn line %d in %s skipped", number, name)
    return events


class Outbox:
    def __init__(
        self,
        directory: Path,
        publish: Publish,
        recorded: Recorded,
        queue_depth: QueueDepth,
        batch_size: int,
        flush_ms: int,
        redeliver_after: float,
    ) -> None:
        self._dir = directory
        self._publish = publish
        self._recorded = recorded
        self._queue_depth = queue_depth
        self._batch_size = batch_size
        self._interval = flush_ms / 1000
        self._redeliver_after = redeliver_after
        self._lock = threading.Lock()
        # Held from taking the pending events until they are sent (``_flush``).
        self._publishing = threading.Lock()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._pid = -1
        self._segment: Path | None = None
        self._file: BinaryIO | None = None
        self._pending: Events = []
        self._pending_since: float | None = None  # when the first pending event came
        self._thread: threading.Thread | None = None
        self._replay_delay = 0.0
        self._replay_due = 0.0
        self._confirm_due = 0.0
        # Once per outbox (a fork inherits it): close() does nothing in a process that
        # never started it, and a restart after close() must not register it again.
        atexit.register(self.close)

    # -- request side -------------------------------------------------------------------
    def append(self, events: Events) -> None:
        """Make ``events`` durable on local disk and queue them; never touches the network."""
        lines = b"".join(wire.dumps(e) + b"\n" for e in events)
        with self._lock:
            if self._pid != os.getpid():
                self._start()
            assert self._file is not None
            self._file.write(lines)
            self._file.flush()
            if not self._pending:
                self._pending_since = time.time()
            self._pending.extend(events)
            if len(self._pending) >= self._batch_size:
                self._wake.set()

    # -- lifecycle ------------------------------------------------------------------------
    def _start(self) -> None:
        """(Re)start in this process: after a fork the parent's thread and file are not ours."""
        self._dir.mkdir(parents=True, exist_ok=True)
        self._pid = os.getpid()
        self._pending = []
        self._publishing = threading.Lock()  # a fork's copy may be held by no thread of ours
        self._open_segment()
        self._stopping.clear()
        self._thread = threading.Thread(target=self._run, name="usage-outbox", daemon=True)
        self._thread.start()

    def _open_segment(self) -> None:
        """Create a segment that is locked before any replayer can see it.

        It is created under a name replayers do not glob, locked, and only then
        renamed into view (the rename keeps the inode and so the lock): a
        replayer in another process can never take a segment still being filled.
        """
        name = f"seg-{os.getpid()}-{uuid.uuid4().hex}.jsonl"
        hidden, segment = self._dir / f".new-{name}", self._dir / name
        self._file = open(hidden, "ab")  # noqa: SIM115
        fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.rename(hidden, segment)
        self._segment = segment

    def close(self) -> None:
        """Publish what is buffered; whatever is not yet recorded stays on disk."""
        if self._thread is None or self._pid != os.getpid():
            return
        self._stopping.set()
        self._wake.set()
        self._thread.join(timeout=10)
        self._thread = None
        self._flush()
        with self._lock:
            if self._file is not None:
                if self._file.tell() == 0 and self._segment is not None:
                    self._segment.unlink(missing_ok=True)  # nothing was written to it
                self._file.close()
                self._file = None
            self._pid = -1

    def flush(self) -> None:
        """Publish and confirm now (tests and shutdown); normally the thread does this."""
        self._flush()
        self._replay_due = self._confirm_due = 0.0
        self._replay()
        self._confirm()

    # -- background side ----------------------------------------------------------------
    def _run(self) -> None:
        while not self._stopping.is_set():
            self._wake.wait(self._interval)
            self._wake.clear()
            try:
                self._flush()
                self._replay()
                self._confirm()
            except Exception:  # the thread must outlive any single failure
                log.exception("outbox cycle failed; events stay spooled")

    def _publish_chunks(
        self,
        segment_id: str,
        events: Events,
        skip: frozenset[str] = frozenset(),
        accepted_at: float | None = None,
    ) -> int:
        """Publish ``events`` in chunks (ids ``<segment_id>-<n>``); returns the chunk count."""
        chunks = range(0, len(events), self._batch_size)
        for number, start in enumerate(chunks):
            batch_id = f"{segment_id}-{number}"
            if batch_id not in skip:
                self._publish(batch_id, events[start : start + self._batch_size], accepted_at)
        return len(chunks)

    def _publish_segment(
        self, segment: Path, events: Events, accepted_at: float | None = None
    ) -> None:
        """Publish a segment, then rename it to wait for its receipts (mtime: publish time)."""
        segment_id = _segment_id(segment)
        chunks = self._publish_chunks(segment_id, events, accepted_at=accepted_at)
        sent = segment.with_name(f"sent-{segment_id}-{chunks}.jsonl")
        os.rename(segment, sent)
        os.utime(sent)

    def _flush(self) -> None:
        """Publish what is pending. One flush at a time, from taking the events until
        they are sent, so ``flush()`` returns only once the thread's publish in flight
        is sent too (it returned at once, and a test then found the queue empty);
        requests' appends never wait for it, only for the moment the events are taken."""
        with self._publishing:
            with self._lock:
                if not self._pending or self._file is None or self._segment is None:
                    return
                batch, self._pending = self._pending, []
                since, self._pending_since = self._pending_since, None
                done_file, done_segment = self._file, self._segment
                self._open_segment()
            # The full segment is closed (releasing its lock) only after publishing, so
            # no other process replays it while we are still sending it.
            with done_file:
                try:
                    self._publish_segment(done_segment, batch, since)
                except Exception as exc:
                    log.warning(
                        "broker unavailable; %d events kept for replay: %s", len(batch), exc
                    )
                    # Retry it soon, but no sooner than the replay back-off allows.
                    retry_in = max(self._interval, self._replay_delay)
                    self._replay_due = min(self._replay_due, time.monotonic() + retry_in)

    def _replay(self) -> None:
        """Publish segments no live writer holds: ours that failed, or a dead process's."""
        now = time.monotonic()
        if now < self._replay_due:
            return
        for path in sorted(self._dir.glob("seg-*.jsonl")):
            if path == self._segment:
                continue
            try:
                self._replay_segment(path)
            except Exception as exc:
                self._replay_delay = min(_MAX_REPLAY_BACKOFF, max(0.5, self._replay_delay * 2))
                self._replay_due = now + self._replay_delay
                log.warning("replay of %s deferred %.1fs: %s", path.name, self._replay_delay, exc)
                return
        self._replay_delay = 0.0
        self._replay_due = now + _REPLAY_SCAN_INTERVAL

    def _replay_segment(self, path: Path) -> None:
        with _locked(path) as handle:
            if handle is None:
                return
            events = _read_events(handle, path.name)
            self._publish_segment(path, events)
        if events:
            log.info("replayed %d spooled events from %s", len(events), path.name)

    def _confirm(self) -> None:
        """Delete sent segments whose chunks all have receipts; re-send overdue ones."""
        now = time.monotonic()
        if now < self._confirm_due:
            return
        self._confirm_due = now + _CONFIRM_INTERVAL
        sent = sorted(self._dir.glob("sent-*.jsonl"))
        for start in range(0, len(sent), _CONFIRM_PAGE):
            if not self._confirm_page(sent[start : start + _CONFIRM_PAGE]):
                return

    def _confirm_page(self, paths: list[Path]) -> bool:
        batches = {path: _sent_parts(path)[1] for path in paths}
        try:
            recorded = self._recorded([b for ids in batches.values() for b in ids])
        except Exception as exc:
            log.warning("could not check receipts; sent segments kept: %s", exc)
            return False
        overdue = []
        for path, batch_ids in batches.items():
            if recorded.issuperset(batch_ids):
                path.unlink(missing_ok=True)
            elif _age(path) >= self._redeliver_after:
                overdue.append(path)
        if overdue and self._queue_is_empty():
            for path in overdue:
                self._redeliver(path, recorded)
        return True

    def backlog(self) -> tuple[int, float]:
        """Segments holding events not yet confirmed recorded, and the age of the oldest
        (s): every sent one, and those not yet published that hold any event (a
        process's open segment is empty between flushes)."""
        paths = [
            *(path for path in self._dir.glob("seg-*.jsonl") if _size(path)),
            *self._dir.glob("sent-*.jsonl"),
        ]
        return len(paths), max((_age(path) for path in paths), default=0.0)

    def queue_depth(self) -> int:
        """Messages waiting in the broker's queue (raises while the broker is down)."""
        return self._queue_depth()

    def _queue_is_empty(self) -> bool:
        try:
            return self._queue_depth() == 0
        except Exception as exc:  # the broker is down: re-sending can wait for it
            log.warning("could not read the queue depth; re-sending deferred: %s", exc)
            return False

    def _redeliver(self, path: Path, recorded: set[str]) -> None:
        with _locked(path) as handle:
            if handle is None:
                return
            events = _read_events(handle, path.name)
            # Accepted before its last publication (the file's mtime): the lag counted
            # from there is a lower bound, but it counts the redelivery's wait.
            published = path.stat().st_mtime
            self._publish_chunks(_sent_parts(path)[0], events, frozenset(recorded), published)
            os.utime(path)  # restarts its wait for receipts
        log.warning("re-sent unrecorded batches of %s (%d events)", path.name, len(events))


def _age(path: Path) -> float:
    try:
        return time.time() - path.stat().st_mtime
    except FileNotFoundError:
        return 0.0


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0
