"""Celery Beat's scheduler: RedBeat, made to outlive Redis losing its state or going away.

RedBeat keeps the schedule and a lock (one Beat at a time) in Redis. Redis restarted
without its data, or flushed, takes both: RedBeat's next extension of the lock
raises ``LockNotOwnedError`` and Beat exits, and with it the daily report, the
budgets' rebuild and the alerts' retries stop. Redis away raises a connection
error from the same tick. Here a lost lock is taken again (unless another Beat took
it meanwhile) and the lost entries are installed again, and a Redis away is waited
out: Beat lives on.

What was lost is when each job ran last: the entries installed again count from
now, each job next due at its next time (a report day missed meanwhile is caught up
by the report itself).
"""

from __future__ import annotations

import logging
from typing import Any

import redis
from redbeat import RedBeatScheduler
from redis.exceptions import LockError

log = logging.getLogger("usage_billing.beat")
REDIS_AWAY_WAIT_SECONDS = 5.0


class ResilientRedBeatScheduler(RedBeatScheduler):
    def tick(self, min: Any = min, **kwargs: Any) -> float:
        try:
            return super().tick(min=min, **kwargs)
        except LockError:  # LockNotOwnedError: the lock's key is gone from Redis
            log.warning("beat's lock is gone from Redis (restarted or flushed): taking it again")
            return self._recover()
        except redis.RedisError as exc:
            log.warning("Redis unreachable from beat (%s): waiting for it", type(exc).__name__)
            return REDIS_AWAY_WAIT_SECONDS

    def _recover(self) -> float:
        try:
            if not self.lock or not self.lock.acquire(blocking=False):
                log.warning("another beat holds the lock now: this one waits")
                return self.max_interval
            self.setup_schedule()
        except redis.RedisError as exc:
            log.warning("Redis unreachable from beat (%s): waiting for it", type(exc).__name__)
            return REDIS_AWAY_WAIT_SECONDS
        log.info("beat holds its lock again and its schedule is in Redis again")
        return 0.0
