"""The budgets' state in Redis, where admission reads it: no database on the request path.

Per key hash, a record of its customer, whether it is revoked, and the rules of the
budgets that apply to it (the customer's and the key's own). Per budget and period:

- ``spend``: the period's spend as PostgreSQL holds it (``usage_daily``), written by
  the worker after each batch it records, only ever raised (``SET`` to the larger),
  so two workers writing out of order never lower it and no event counts twice;
- ``avg``: the mean cost of a call this period, the reservation an admitted call makes;
- ``resv``: the reservations of calls admitted and not yet recorded (a hash of call
  id to amount, with ``_sum``) and ``resv:at`` (when each lapses).

Admission is one Lua script, one round trip: it reads the key's record, finds
each budget's current period (the API passes today's date; the script applies
the billing anchor), drops lapsed reservations, refuses the call when a hard
budget's spend plus reservations plus this call's estimate passes the limit (or
spend alone reached it), and otherwise reserves the estimate on every budget,
atomically, so concurrent calls cannot pass on one stale figure. (The script
names keys it builds itself: fine on one Redis, not on a Redis Cluster.)
A recorded event releases its call's reservation (once: ``HDEL``); a call that
produced no event releases it at the response.

Amounts are integers: micro-USD (spend rounded up, limits down) or tokens.
"""

from __future__ import annotations

import calendar
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import ROUND_CEILING, Decimal
from typing import Literal, NamedTuple

import redis

from app.periods import Period, PeriodKind, period_at

PREFIX = "ub:budget:"
_VERDICTS: dict[int, Verdict] = {-1: "not_loaded", -2: "unknown_key", -3: "revoked"}
# Reservations live at most a period (31 days) past their last use.
_KEEP_RESERVATIONS = 32 * 86400
LOADED = PREFIX + "loaded"  # absent: Redis lost the state and it must be rebuilt
REBUILDING = PREFIX + "rebuilding"  # held while a rebuild is queued or running
_MICRO = Decimal("0.000001")

_ADMIT = """
local now, call, lapses, keep = tonumber(ARGV[1]), ARGV[2], ARGV[3], ARGV[4]
local today, y, m, d = ARGV[5], tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8])
local this_month, last_month = tonumber(ARGV[9]), tonumber(ARGV[10])
if redis.call('EXISTS', KEYS[2]) == 0 then return {-1} end
local record = redis.call('HMGET', KEYS[1], 'revoked', 'rules')
if not record[1] then return {-2} end
if record[1] == '1' then return {-3} end
local rules = cjson.decode(record[2])
if #rules == 0 then return {0} end
local function start_of(kind, anchor)
  if kind == 'day' then return today end
  if kind == 'month' then return string.format('%04d%02d01', y, m) end
  local day = math.min(anchor, this_month)
  if d >= day then return string.format('%04d%02d%02d', y, m, day) end
  if m == 1 then return string.format('%04d12%02d', y - 1, math.min(anchor, last_month)) end
  return string.format('%04d%02d%02d', y, m - 1, math.min(anchor, last_month))
end
local keys = {}
for i, rule in ipairs(rules) do
  local base = '__PREFIX__' .. string.format('%d', rule[1]) .. ':' .. start_of(rule[3], rule[6])
  keys[i] = {base .. ':spend', base .. ':resv:at', base .. ':resv', base .. ':avg'}
end
for _, k in ipairs(keys) do
  for _, id in ipairs(redis.call('ZRANGEBYSCORE', k[2], '-inf', now)) do
    local amount = tonumber(redis.call('HGET', k[3], id) or '0')
    redis.call('HDEL', k[3], id)
    redis.call('HINCRBY', k[3], '_sum', 0 - amount)  -- never "-0", which Redis refuses
    redis.call('ZREM', k[2], id)
  end
end
local estimates = {}
for i, k in ipairs(keys) do
  estimates[i] = tonumber(redis.call('GET', k[4]) or '0')
  if rules[i][5] then
    local limit = rules[i][4]
    local spent = tonumber(redis.call('GET', k[1]) or '0')
    local reserved = tonumber(redis.call('HGET', k[3], '_sum') or '0')
    if spent >= limit or spent + reserved + estimates[i] > limit then
      return {i, record[2]}
    end
  end
end
local held = {0}
for i, k in ipairs(keys) do
  redis.call('ZADD', k[2], lapses, call)
  redis.call('HSET', k[3], call, estimates[i])
  redis.call('HINCRBY', k[3], '_sum', estimates[i])
  redis.call('EXPIRE', k[2], keep)
  redis.call('EXPIRE', k[3], keep)
  table.insert(held, k[2])
  table.insert(held, k[3])
end
return held
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


def from_units(metric: str, units: int) -> Decimal:
    """What ``to_units`` counted, as an amount again: USD or tokens."""
    return Decimal(units) * _MICRO if metric == "usd" else Decimal(units)


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
        self._admit = client.register_script(_ADMIT.replace("__PREFIX__", PREFIX))
        self._release = client.register_script(_RELEASE)
        self._raise = client.register_script(_RAISE)

    # -- the request path ------------------------------------------------------

    def admit(self, key_hash: str, call_id: str, now: datetime) -> Admission:
        """Decide one metered call in one round trip: the script reads the key's record,
        finds each budget's current period, and checks and reserves atomically."""
        today = now.astimezone(UTC).date()
        previous = (today.replace(day=1) - timedelta(days=1)).day
        result = self._admit(
            keys=[PREFIX + "key:" + key_hash, LOADED],
            args=[
                now.timestamp(),
                call_id,
                now.timestamp() + self.ttl,
                _KEEP_RESERVATIONS + self.ttl,
                f"{today:%Y%m%d}",
                today.year,
                today.month,
                today.day,
                calendar.monthrange(today.year, today.month)[1],
                previous,
            ],
        )
        code = int(result[0])
        if code < 0:
            return Admission(_VERDICTS[code])
        if code == 0:
            return Admission("admitted", reserved=tuple(k.decode() for k in result[1:]))
        rule = _rules(result[1])[code - 1]
        return Admission("refused", rule, rule.period_at(now))

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
        spent_units = to_units(rule.metric, spent)
        mean = -(-spent_units // calls) if calls else 0  # rounded up
        self._raise(keys=[spend, avg], args=[spent_units, mean, self._expiry(period, now)])
        self.release([at, resv], list(call_ids))

    def first_time(self, rule: Rule, period: Period, what: str, now: datetime) -> bool:
        """True once per budget, period and ``what``: a notice given exactly once."""
        flag = rule.keys(period)[0].removesuffix(":spend") + ":" + what
        return bool(self.redis.set(flag, "1", nx=True, ex=self._expiry(period, now)))

    def _expiry(self, period: Period, now: datetime) -> int:
        """Seconds a period's figures are kept: to its end, and a reservation's life on."""
        return max(60, int((period.ends_at - now).total_seconds()) + self.ttl)

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


def _rules(encoded: bytes) -> tuple[Rule, ...]:
    return tuple(Rule(*values) for values in json.loads(encoded))
