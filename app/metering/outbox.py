"""A durable, batching hand-off from request threads to Celery.

Publishing one Celery message per request costs most of the API's capacity
(see shared/FACTS.md), so a request only appends its event to an append-only
segment file (one ``write`` to the OS, no fsync, no network) and to an
in-memory batch. A background thread publishes one Celery task per batch
(every ``batch_size`` events or ``flush_ms``) and deletes the segment once the
broker has it. When the broker is down the segment stays on disk and is
replayed when it is back; segments left by a dead process (no one holds their
``flock``) are replayed by any live one. Delivery is at least once; the worker's
insert is idempotent by ``event_id``, so storage is exactly once.
"""

from __future__ import annotations

import atexit
import fcntl
import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

log = logging.getLogger("usage_billing.metering")

Publish = Callable[[list[dict[str, Any]]], None]
_MAX_REPLAY_BACKOFF = 30.0


class Outbox:
    def __init__(self, directory: Path, publish: Publish, batch_size: int, flush_ms: int) -> None:
        self._dir = directory
        self._publish = publish
        self._batch_size = batch_size
        self._interval = flush_ms / 1000
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._pid = -1
        self._segment: Path | None = None
        self._file: TextIO | None = None
        self._pending: list[dict[str, Any]] = []
        self._thread: threading.Thread | None = None
        self._replay_delay = 0.0
        self._replay_due = 0.0

    # -- request side -------------------------------------------------------------------
    def append(self, events: list[dict[str, Any]]) -> None:
        """Make ``events`` durable on local disk and queue them; never touches the network."""
        lines = "".join(json.dumps(e, separators=(",", ":")) + "\n" for e in events)
        with self._lock:
            if self._pid != os.getpid():
                self._start()
            assert self._file is not None
            self._file.write(lines)
            self._file.flush()
            self._pending.extend(events)
            if len(self._pending) >= self._batch_size:
                self._wake.set()

    # -- lifecycle ------------------------------------------------------------------------
    def _start(self) -> None:
        """(Re)start in this process: after a fork the parent's thread and file are not ours."""
        self._dir.mkdir(parents=True, exist_ok=True)
        self._pid = os.getpid()
        self._pending = []
        self._open_segment()
        self._stopping.clear()
        self._thread = threading.Thread(target=self._run, name="usage-outbox", daemon=True)
        self._thread.start()
        atexit.register(self.close)

    def _open_segment(self) -> None:
        """Create a segment that is locked before any replayer can see it.

        It is created under a name replayers do not glob, locked, and only then
        renamed into view (the rename keeps the inode and so the lock): a
        replayer in another process can never take a segment still being filled.
        """
        name = f"seg-{os.getpid()}-{uuid.uuid4().hex}.jsonl"
        hidden, segment = self._dir / f".new-{name}", self._dir / name
        self._file = open(hidden, "a", encoding="utf-8")  # noqa: SIM115
        fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.rename(hidden, segment)
        self._segment = segment

    def close(self) -> None:
        """Publish what is buffered; whatever the broker refuses stays on disk for replay."""
        if self._thread is None or self._pid != os.getpid():
            return
        self._stopping.set()
        self._wake.set()
        self._thread.join(timeout=10)
        self._thread = None
        self._flush()
        with self._lock:
            if self._file is not None:
                self._file.close()
                if self._segment is not None and self._segment.stat().st_size == 0:
                    self._segment.unlink()
                self._file = None
            self._pid = -1

    def flush(self) -> None:
        """Publish now (tests and shutdown); normally the thread does this."""
        self._flush()
        self._replay_due = 0.0
        self._replay()

    # -- background side ----------------------------------------------------------------
    def _run(self) -> None:
        while not self._stopping.is_set():
            self._wake.wait(self._interval)
            self._wake.clear()
            try:
                self._flush()
                self._replay()
            except Exception:  # the thread must outlive any single failure
                log.exception("outbox flush failed; events stay spooled")

    def _flush(self) -> None:
        with self._lock:
            if not self._pending or self._file is None or self._segment is None:
                return
            batch, self._pending = self._pending, []
            done_file, done_segment = self._file, self._segment
            self._open_segment()
        # The full segment is closed (releasing its lock) only after publishing, so no
        # other process replays it while we are still sending it.
        try:
            for start in range(0, len(batch), self._batch_size):
                self._publish(batch[start : start + self._batch_size])
        except Exception as exc:
            log.warning("broker unavailable; %d events kept for replay: %s", len(batch), exc)
            done_file.close()  # leaves the file for _replay
            self._replay_delay = max(self._replay_delay, self._interval)
            return
        done_segment.unlink()
        done_file.close()

    def _replay(self) -> None:
        """Send segments no live writer holds: ours that failed, or a dead process's."""
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

    def _replay_segment(self, path: Path) -> None:
        try:
            handle = open(path, encoding="utf-8")  # noqa: SIM115
        except FileNotFoundError:
            return
        with handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return  # a live writer or another replayer has it
            if os.fstat(handle.fileno()).st_nlink == 0:
                return  # replayed and removed while we waited
            events = []
            for number, line in enumerate(handle, 1):
                try:
                    events.append(json.loads(line))
                except ValueError:
                    log.error("torn line %d in %s skipped", number, path.name)
            for start in range(0, len(events), self._batch_size):
                self._publish(events[start : start + self._batch_size])
            path.unlink()
        if events:
            log.info("replayed %d spooled events from %s", len(events), path.name)
