"""The leases an API process holds: most metered calls admitted without a round trip.

An admission far from every hard limit reserves, in the same atomic script, up
to ``BUDGET_LEASE_CALLS`` calls' estimates (never more than 1/16 of what is left
under a limit) for ``BUDGET_LEASE_SECONDS``; the process admits that key's next
calls itself until the lease is spent or over. A key in use gets its next lease
ahead, from a thread here, so its calls keep away from Redis altogether. The
overshoot bound is the one without leases, since every call admitted holds its
reservation in Redis first. Under a rate limit a lease is also counted in the
minute's window when taken (``app.ratelimits.limits``), and ends with the minute.

What a lease costs, and how it is kept short:
- a process's unused calls stay reserved until it gives them back: a thread
  here returns each lease when it ends, and all of them when the process exits
  (one that dies leaves them to lapse with ``BUDGET_RESERVATION_TTL_SECONDS``);
- a key revoked, or a budget changed, must not be served on an old lease: the
  change is announced on a Redis channel, and every process drops the key's
  lease (at once in the process that made the change); a process that was cut
  off from the channel drops all its leases when it is back. Were a notice lost
  anyway, a lease ends within ``BUDGET_LEASE_SECONDS``.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from datetime import UTC, datetime

import redis

from app.budgets.counters import PREFIX, Admission, Counters, Lease
from app.observability.metrics import BUDGET_ADMISSIONS

log = logging.getLogger("usage_billing.budgets")
CHANGED = PREFIX + "changed"  # channel: the key hashes whose record changed
_ON_LEASE, _IN_REDIS = BUDGET_ADMISSIONS.labels("lease"), BUDGET_ADMISSIONS.labels("redis")


class Leases:
    """Admission for one API process: through its leases, or through Redis."""

    def __init__(self, counters: Counters, url: str, seconds: float, calls: int) -> None:
        self.counters = counters
        self.seconds, self.calls = seconds, calls
        self._url = url
        self._pid = 0
        self._lock = threading.Lock()
        self._held: dict[str, Lease] = {}
        self._ended: list[Lease] = []
        self._stopping = threading.Event()

    def admit(
        self, key_hash: str, now: datetime, tokens: Callable[[], int] = lambda: 0
    ) -> Admission:
        """Admit one call of this key: on its lease if one is running, else in Redis
        (giving back the lease that ended, taking a new one if the budgets allow).
        ``tokens``: what it reserves under a tokens-per-minute limit, estimated only
        when the call needs it (a lease under such a limit, or Redis asked)."""
        if self.seconds <= 0:
            _IN_REDIS.inc()
            return self.counters.admit(key_hash, uuid.uuid4().hex, now, tokens=tokens())
        self._start()
        with self._lock:
            lease = self._held.pop(key_hash, None)
            admitted = lease.admit(now.timestamp(), tokens) if lease else None
            if lease and admitted:
                self._held[key_hash] = lease
                _ON_LEASE.inc()
                return admitted
        _IN_REDIS.inc()
        try:
            admission = self.counters.admit(
                key_hash,
                uuid.uuid4().hex,
                now,
                self.calls,
                self.seconds,
                returning=lease,
                tokens=tokens(),
            )
        except redis.RedisError:
            self._end([lease] if lease else [])  # the thread gives it back later
            raise
        if admission.lease:
            with self._lock:
                displaced = self._held.pop(key_hash, None)  # another thread's, meanwhile
                self._held[key_hash] = admission.lease
            self._end([displaced] if displaced else [])
        return admission

    def drop(self, key_hashes: Iterable[str]) -> None:
        """End these keys' leases now: their record changed."""
        with self._lock:
            self._ended.extend(lease for key in key_hashes if (lease := self._held.pop(key, None)))

    def _drop_all(self) -> None:
        with self._lock:
            self._ended.extend(self._held.values())
            self._held = {}

    def announce(self, key_hashes: list[str]) -> None:
        """Tell every process (this one at once) that these keys' records changed."""
        self.drop(key_hashes)
        self.counters.redis.publish(CHANGED, json.dumps(key_hashes))

    def _end(self, leases: list[Lease]) -> None:
        with self._lock:
            self._ended.extend(leases)

    def _start(self) -> None:
        """Once per process (after the fork): the thread that ends leases."""
        if self._pid == os.getpid():
            return
        with self._lock:
            if self._pid == os.getpid():
                return
            self._pid = os.getpid()
            self._held, self._ended = {}, []  # a parent's leases are the parent's
            threading.Thread(target=self._run, name="budget-leases", daemon=True).start()
            atexit.register(self.stop)

    def _run(self) -> None:
        """Give back ended leases; drop the leases of keys announced as changed."""
        client = redis.Redis.from_url(self._url)
        pubsub = None
        failures = 0
        while not self._stopping.is_set():
            try:
                if pubsub is None:
                    pubsub = client.pubsub(ignore_subscribe_messages=True)
                    pubsub.subscribe(CHANGED)
                    self._drop_all()  # notices may have gone by meanwhile
                message = pubsub.get_message(timeout=min(self.seconds, 1.0) / 4)
                if message is not None:
                    self.drop(json.loads(message["data"]))
                self._renew_ahead()
                self._give_back()
                if failures:
                    log.warning("budget leases: Redis answers again")
                failures = 0
            except Exception as exc:  # noqa: BLE001 - never let the thread die
                if not failures:  # once per outage; admission reports each call's own
                    log.warning("budget leases: %s; trying again until Redis answers", exc)
                failures += 1
                pubsub = None
                self._stopping.wait(min(30, 2 ** min(failures, 5)))

    def _renew_ahead(self) -> None:
        """Take the next lease of each key in use whose lease is running out, here
        rather than on a call's path. What the replaced one left unused goes back
        only after the swap, so no call can take a part that was given back."""
        now = time.time()
        with self._lock:
            due = [
                (k, lease)
                for k, lease in self._held.items()
                if lease.running_out(now, self.seconds)
            ]
        for key_hash, old in due:
            admission = self.counters.admit(
                key_hash,
                uuid.uuid4().hex,
                datetime.fromtimestamp(now, UTC),
                self.calls,
                self.seconds,
                tokens=old.estimate,
                ahead=True,
            )
            fresh = admission.lease
            if fresh is None:  # near a limit, refused or revoked: calls ask Redis again
                continue
            fresh.untouched()  # no call took it: its first call is yet to come
            with self._lock:
                if self._held.get(key_hash) is old:
                    self._held[key_hash], fresh = fresh, old
            self._end([fresh])  # the one not held: given back below

    def stop(self) -> None:
        """End the thread and give every lease back (a process, or a test, done with it)."""
        self._stopping.set()
        self._give_back(everything=True)

    def _give_back(self, everything: bool = False) -> None:
        """Return the unused calls of the leases that ended (all of them at exit)."""
        now = time.time()
        with self._lock:
            over = [
                key
                for key, lease in self._held.items()
                if everything or now >= lease.until or lease.unused == 0
            ]
            ended = self._ended + [self._held.pop(key) for key in over]
            self._ended = []
        for lease in ended:
            try:
                self.counters.close(lease)
            except redis.RedisError as exc:  # it lapses with the reservation TTL
                log.warning("lease %s not given back: %s", lease.id, exc)
