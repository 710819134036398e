"""Where an ingest batch waits for its worker: in Redis, beside a small Celery message.

A batch of 2,000 events is ~500 KB of JSON. Carried inside its Celery message,
kombu's Redis transport escapes it into a JSON envelope at the API; the
worker's consumer process then parses that envelope, decodes the body (Celery
does so to tell its protocol versions apart), copies it into its unacked hash
and pickles it down a pipe to the pool process: a large share of both
processes' CPU (docs/performance.md). So the outbox SETs the events under the
batch id, the message carries only the id, and the pool process GETs them.

Nothing new can be lost. The key is written before its message is sent: a
failed write fails the publish and the outbox keeps the segment. It is deleted
only once the batch is recorded or parked (its receipt committed), and expires
only as a backstop for a failed delete (``METER_BATCH_TTL_SECONDS``, days). A
message whose events are gone records nothing and writes no receipt, so the
outbox sends the batch again from its spool, as for a message the broker lost.

Without Redis (the embedded default's filesystem broker) there is no store and
the events travel inside the message as before.
"""

from __future__ import annotations

import logging
from typing import Any

import redis

from app.ingest import wire

log = logging.getLogger("usage_billing.ingest")

_KEY_PREFIX = "usage-billing:batch:"
# Redis being unreachable: the caller's retry (the outbox, or Celery's) handles it.
UNAVAILABLE = (redis.ConnectionError, redis.TimeoutError)


class BatchStore:
    def __init__(self, redis_url: str, ttl_seconds: int) -> None:
        self._redis = redis.Redis.from_url(
            redis_url, socket_connect_timeout=3, socket_timeout=30, health_check_interval=30
        )
        self._ttl = ttl_seconds

    def put(self, batch_id: str, events: list[dict[str, Any]]) -> None:
        """Store a batch's events; a re-sent batch overwrites its own key."""
        self._redis.set(_KEY_PREFIX + batch_id, wire.dumps(events), ex=self._ttl)

    def take(self, batch_id: str) -> list[dict[str, Any]] | None:
        """The batch's events, or None when they are gone (the outbox re-sends them)."""
        data = self._redis.get(_KEY_PREFIX + batch_id)
        return None if data is None else wire.loads(data)

    def forget_connections(self) -> None:
        """In a forked child: new sockets of its own, the parent's left to the parent."""
        self._redis.connection_pool.reset()

    def drop(self, batch_id: str) -> None:
        """Delete a recorded batch's events; a failure leaves them to the key's expiry."""
        try:
            self._redis.delete(_KEY_PREFIX + batch_id)
        except UNAVAILABLE as exc:
            log.warning(
                "batch %s recorded; its events stay in Redis until they expire: %s",
                batch_id,
                type(exc).__name__,
            )
