"""The budgets' state in Redis, where admission reads it: no database on the request path.

Per key hash, a record of its customer, whether it is revoked, and the rules of the
budgets that apply to it (the customer's and the key's own). Per budget and period:

- ``spend``: the period's spend as PostgreSQL holds it (``usage_daily``), written by
  the worker after each batch it records, only ever raised (``SET`` to the larger),
  so two workers writing out of order never lower it and no event counts twice;
- ``avg``: the mean cost of a call this period, the reservation an admitted call makes;
- ``resv``: the reservations of calls admitted and not yet recorded (a hash of call
  id to amount, with ``_sum``) and ``resv:at`` (when each lapses).

Admission is one Lua script over those keys: it drops lapsed reservations, refuses
the call when a hard budget's spend plus reservations plus this call's estimate
passes the limit (or spend alone reached it), and otherwise reserves the estimate
on every budget, atomically, so concurrent calls cannot pass on one stale figure.
A recorded event releases its call's reservation (once: ``HDEL``); a call that
produced no event releases it at the response.

Amounts are integers: micro-USD (spend rounded up, limits down) or tokens.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import ROUND_CEILING, Decimal
from typing import Any, Literal, NamedTuple

import redis

from app.budgets.periods import Period, PeriodKind, period_at

PREFIX = "ub:budget:"
LOADED = PREFIX + "loaded"  # absent: Redis lost the state and it must be rebuilt
REBUILDING = PREFIX + "rebuilding"  # held while a rebuild is queued or running
_MICRO = Decimal("0.000001")

_ADMIT = """
local now, call, lapses = tonumber(ARGV[1]), ARGV[2], ARGV[3]
local n = #KEYS / 4
for i = 0, n - 1 do
  local at, resv = KEYS[i * 4 + 2], KEYS[i * 4 + 3]
  for _, id in ipairs(redis.call('ZRANGEBYSCORE', at, '-inf', now)) do
    local amount = tonumber(redis.call('HGET', resv, id) or '0')
    redis.call('HDEL', resv, id)
    redis.call('HINCRBY', resv, '_sum', 0 - amount)  -- never "-0", which Redis refuses
    redis.call('ZREM', at, id)
  end
end
for i = 0, n - 1 do
  if ARGV[4 + i * 2 + 1] == '1' then
    local limit = tonumber(ARGV[4 + i * 2])
    local spent = tonumber(redis.call('GET', KEYS[i * 4 + 1]) or '0')
    local reserved = tonumber(redis.call('HGET', KEYS[i * 4 + 3], '_sum') or '0')
    local estimate = tonumber(redis.call('GET', KEYS[i * 4 + 4]) or '0')
    if spent >= limit or spent + reserved + estimate > limit then
      return i + 1
    end
  end
end
for i = 0, n - 1 do
  local estimate = tonumber(redis.call('GET', KEYS[i * 4 + 4]) or '0')
  redis.call('ZADD', KEYS[i * 4 + 2], lapses, call)
  redis.call('HSET', KEYS[i * 4 + 3], call, estimate)
  redis.call('HINCRBY', KEYS[i * 4 + 3], '_sum', estimate)
  redis.call('EXPIRE', KEYS[i * 4 + 2], ARGV[4 + n * 2])
  redis.call('EXPIRE', KEYS[i * 4 + 3], ARGV[4 + n * 2])
end
return 0
"""

_RELEASE = """
for i = 0, #KEYS / 2 - 1 do
  local at, resv = KEYS[i * 2 + 1], KEYS[i * 2 + 2]
  for _, id in ipairs(ARGV) do
    local amount = redis.call('HGET', resv, id)
    if amount then
      redis.call('HDEL', resv, id)
      redis.call('HINCRBY', resv, '_sum', 0 - tonumber(amount))
      redis.call('ZREM', at, id)
    end
  end
end
return 0
"""

_RAISE = """
local current = tonumber(redis.call('GET', KEYS[1]) or '-1')
if tonumber(ARGV[1]) > current then
  redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[3])
end
redis.call('SET', KEYS[2], ARGV[2], 'EX', ARGV[3])
return 0
"""


def to_units(metric: str, amount: Decimal, rounding: str = ROUND_CEILING) -> int:
    """An amount as the integer Redis counts: micro-USD or tokens."""
    if metric == "usd":
        return int((amount / _MICRO).to_integral_value(rounding=rounding))
    return int(amount.to_integral_value(rounding=rounding))


class Rule(NamedTuple):
    """What admission needs of one budget."""

    budget_id: int
    metric: str
    period: PeriodKind
    limit_units: int
    hard: bool
    anchor_day: int

    def period_at(self, now: datetime) -> Period:
        return period_at(self.period, now, self.anchor_day)

    def keys(self, period: Period) -> tuple[str, str, str, str]:
        base = f"{PREFIX}{self.budget_id}:{period.start:%Y%m%d}"
        return base + ":spend", base + ":resv:at", base + ":resv", base + ":avg"


class KeyRecord(NamedTuple):
    customer_id: int
    revoked: bool
    rules: tuple[Rule, ...]


Verdict = Literal["admitted", "refused", "revoked", "unknown_key", "not_loaded"]


@dataclass(frozen=True)
class Admission:
    """What admission decided, and what to release if the call produces no event."""

    verdict: Verdict
    rule: Rule | None = None
    period: Period | None = None
    reserved: tuple[str, ...] = ()  # the reservation keys this call holds, in pairs


class Counters:
    """The Redis half of budgets, for the API (admission) and the worker (settling)."""

    def __init__(self, client: redis.Redis, reservation_ttl_seconds: int) -> None:
        self.redis = client
        self.ttl = reservation_ttl_seconds
        self._admit = client.register_script(_ADMIT)
        self._release = client.register_script(_RELEASE)
        self._raise = client.register_script(_RAISE)

    # -- the request path ------------------------------------------------------

    def admit(self, key_hash: str, call_id: str, now: datetime) -> Admission:
        """Decide one metered call: two round trips, the second one atomic."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.hgetall(PREFIX + "key:" + key_hash)
        pipe.exists(LOADED)
        record, loaded = pipe.execute()
        if not loaded:
            return Admission("not_loaded")
        if not record:
            return Admission("unknown_key")
        parsed = _parse(record)
        if parsed.revoked:
            return Admission("revoked")
        if not parsed.rules:
            return Admission("admitted")
        keys: list[str] = []
        argv: list[Any] = [now.timestamp(), call_id, now.timestamp() + self.ttl]
        periods = [rule.period_at(now) for rule in parsed.rules]
        for rule, period in zip(parsed.rules, periods, strict=True):
            keys.extend(rule.keys(period))
            argv.extend([rule.limit_units, "1" if rule.hard else "0"])
        longest = max(int((p.ends_at - now).total_seconds()) for p in periods)
        argv.append(longest + self.ttl)
        refused = int(self._admit(keys=keys, args=argv))
        if refused:
            return Admission("refused", parsed.rules[refused - 1], periods[refused - 1])
        held = tuple(k for i in range(0, len(keys), 4) for k in keys[i + 1 : i + 3])
        return Admission("admitted", reserved=held)

    def release(self, reserved: Sequence[str], call_ids: Sequence[str]) -> None:
        """Drop these calls' reservations (pairs of keys: lapse times, amounts); once."""
        if reserved and call_ids:
            self._release(keys=list(reserved), args=list(call_ids))

    # -- the worker --------------------------------------------------------------

    def settle(
        self,
        rule: Rule,
        period: Period,
        spent: Decimal,
        calls: int,
        call_ids: Iterable[str],
        now: datetime,
    ) -> None:
        """Mirror the period's spend from PostgreSQL, and release the recorded calls."""
        spend, at, resv, avg = rule.keys(period)
        ttl = int((period.ends_at - now).total_seconds()) + self.ttl
        spent_units = to_units(rule.metric, spent)
        mean = -(-spent_units // calls) if calls else 0  # rounded up
        self._raise(keys=[spend, avg], args=[spent_units, mean, max(ttl, 60)])
        self.release([at, resv], list(call_ids))

    def spent_units(self, rule: Rule, period: Period) -> int | None:
        value = self.redis.get(rule.keys(period)[0])
        return None if value is None else int(value)

    def publish(self, records: dict[str, KeyRecord]) -> None:
        """Write key records (after a change of keys or budgets, or a rebuild)."""
        pipe = self.redis.pipeline(transaction=False)
        for key_hash, record in records.items():
            pipe.hset(
                PREFIX + "key:" + key_hash,
                mapping={
                    "customer": record.customer_id,
                    "revoked": "1" if record.revoked else "0",
                    "rules": json.dumps([list(rule) for rule in record.rules]),
                },
            )
        pipe.execute()

    def mark_loaded(self) -> None:
        self.redis.set(LOADED, "1")


def _parse(record: dict[bytes, bytes]) -> KeyRecord:
    rules = tuple(Rule(*values) for values in json.loads(record[b"rules"]))
    return KeyRecord(int(record[b"customer"]), record[b"revoked"] == b"1", rules)
