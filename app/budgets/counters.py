"""The budgets' state in Redis, where admission reads it: no database on the request path.

Per key hash, a record of its customer, whether it is revoked, and the rules of the
budgets that apply to it (the customer's and the key's own). Per budget and period:

- ``spend``: the period's spend as PostgreSQL holds it (``usage_daily``), written by
  the worker after each batch it records, only ever raised (``SET`` to the larger),
  so two workers writing out of order never lower it and no event counts twice;
- ``avg``: what an admitted call reserves, the estimate of its cost (``estimate_of``
  in ``app.budgets.spend``: the period's mean per call, else the last 30 days', else
  a stated default, so even a period's first calls are bounded);
- ``resv``: the reservations of calls admitted and not yet recorded (a hash of call
  id to amount, with ``_sum``) and ``resv:at`` (when each lapses). A lease (several
  calls reserved at once, admitted by the API process: ``app.budgets.leases``) is
  one entry holding what it still reserves, with each call's part beside it and a
  bitmap of the calls released, so each is released once.

Admission is one Lua script, one round trip: it reads the key's record, finds
each budget's current period (the API passes today's date; the script applies
the billing anchor), drops lapsed reservations, refuses the call when a hard
budget's spend plus reservations plus this call's estimate passes the limit (or
spend alone reached it), and otherwise reserves the estimate on every budget,
atomically, so concurrent calls cannot pass on one stale figure; far from every
hard limit it reserves a lease's worth instead, and takes back what an ended
lease of the same process left unused. (The script
names keys it builds itself: fine on one Redis, not on a Redis Cluster.)
A recorded event releases its call's reservation (once); a call that produced no
event releases it at the response.

Amounts are integers: micro-USD (spend rounded up, limits down) or tokens.
"""

from __future__ import annotations

import calendar
import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import ROUND_CEILING, Decimal
from pathlib import Path
from typing import Any, Literal, NamedTuple

import redis

from app.periods import Period, PeriodKind, period_at

PREFIX = "ub:budget:"
_VERDICTS: dict[int, Verdict] = {
    -1: "not_loaded",
    -2: "unknown_key",
    -3: "revoked",
    -4: "rate_limited",
}
# Reservations live at most a period (31 days) past their last use.
_KEEP_RESERVATIONS = 32 * 86400
LOADED = PREFIX + "loaded"  # absent: Redis lost the state and it must be rebuilt
REBUILDING = PREFIX + "rebuilding"  # held while a rebuild is queued or running
_MICRO = Decimal("0.000001")
# A lease holds at most this fraction of what is left under a hard limit, so the
# leases of idle processes never hold much of it (and near the limit, none is taken).
LEASE_SHARE = 16
# And at most this fraction of what a rate-limit window has left: what a lease holds
# unused until it ends is refused to the key's other processes (a 429 that a limit
# did not call for), so it is kept smaller than a budget's share. Its tokens are a
# pool its calls take their own estimates from, up to this many times the estimate
# of the call that took it, per call (calls of a key differ in size).
RATE_LEASE_SHARE = 64
RATE_LEASE_SIZES = 4

_SCRIPTS = Path(__file__).with_name("lua")


def _script(name: str, entries: bool = True) -> str:
    """A Lua script of ``lua/``, after the helpers they share (``entries.lua``), with
    the keys' prefix put in where it stands."""
    text = (_SCRIPTS / f"{name}.lua").read_text()
    text = (_SCRIPTS / "entries.lua").read_text() + text if entries else text
    return text.replace("__PREFIX__", PREFIX)


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
    # Rate limits over the key: (scope, requests per minute, tokens per minute).
    limits: tuple[tuple[str, int | None, int | None], ...] = ()


Verdict = Literal["admitted", "refused", "revoked", "unknown_key", "not_loaded", "rate_limited"]


@dataclass
class Lease:
    """Reservations for several calls of one key, taken by one admission: the API
    process admits the rest itself, without asking Redis, until they run out or
    ``until`` (unix time) passes; what it did not use goes back (``Counters.close``).

    Under a rate limit a lease also holds ``calls`` requests of the minute's window
    (it ends with the minute) and, under a tokens-per-minute limit, a pool of tokens
    (``RATE_LEASE_SHARE``, ``RATE_LEASE_SIZES``): each call on it takes its own
    estimate from ``tokens_left``, and one that does not fit asks Redis."""

    id: str
    calls: int
    reserved: tuple[str, ...]
    until: float
    used_at: float  # when a call was last admitted on it
    used: int = 1  # the call that took it
    estimate: int = 0  # tokens per call it reserved in the windows
    tokens_left: int | None = None  # None: no tokens-per-minute limit over the key
    # The windows' figures before the lease ([limit, left]) and when they end (unix
    # time), for the x-ratelimit headers.
    rate: dict[str, Any] | None = None
    tokens_taken: int = 0

    def admit(self, now: float, tokens: Callable[[], int]) -> Admission | None:
        """The next call under this lease, or None when it is spent or over (or the
        call's tokens do not fit what it has left)."""
        if self.used >= self.calls or now >= self.until:
            return None
        held = 0
        if self.tokens_left is not None:
            held = tokens()
            if held > self.tokens_left:
                return None
            self.tokens_left -= held
            self.tokens_taken += held
        self.used += 1
        self.used_at = now
        call = f"{self.id}.{self.used - 1}"
        return Admission(
            "admitted", reserved=self.reserved, call=call, rate=self._rate(now), tokens_held=held
        )

    def _rate(self, now: float) -> dict[str, Any] | None:
        """What the headers report: the windows as the lease found them, less its calls."""
        if self.rate is None:
            return None
        rate: dict[str, Any] = {"reset": max(0.0, self.rate["ends"] - now)}
        if "requests" in self.rate:
            limit, left = self.rate["requests"]
            rate["requests"] = [limit, left - self.used]
        if "tokens" in self.rate:
            limit, left = self.rate["tokens"]
            rate["tokens"] = [limit, left - self.tokens_taken]
        return rate

    def running_out(self, now: float, seconds: float) -> bool:
        """In use lately, and near its end (in time or in calls): worth renewing ahead;
        not in a rate window's last moments (the next call takes the next minute's)."""
        recent = now - self.used_at < seconds / 2
        if self.rate is not None and self.rate["ends"] - now < seconds / 2:
            return False
        return recent and (self.until - now < seconds / 2 or self.unused < self.calls / 4)

    def untouched(self) -> None:
        """Taken ahead of its calls (``Leases``): none of its calls is used yet."""
        self.used = 0
        if self.tokens_left is not None:
            self.tokens_left += self.estimate
            self.tokens_taken = 0

    @property
    def unused(self) -> int:
        return self.calls - self.used


@dataclass(frozen=True)
class Admission:
    """What admission decided, and what to release if the call produces no event."""

    verdict: Verdict
    rule: Rule | None = None
    period: Period | None = None
    reserved: tuple[str, ...] = ()  # the reservation keys this call holds, in pairs
    call: str = ""  # the id the call's event carries, which releases its reservation
    lease: Lease | None = None  # calls after this one the process may admit itself
    # Rate limits: the tightest window's figures when admitted (``requests`` and
    # ``tokens``: [limit, remaining]; ``reset``: seconds), the limit passed when not.
    rate: dict[str, Any] | None = None
    tokens_held: int = 0  # reserved against a tokens-per-minute limit, settled later


class Counters:
    """The Redis half of budgets, for the API (admission) and the worker (settling)."""

    def __init__(self, client: redis.Redis, reservation_ttl_seconds: int) -> None:
        self.redis = client
        self.ttl = reservation_ttl_seconds
        self._admit = client.register_script(_script("admit"))
        self._release = client.register_script(_script("release"))
        self._close = client.register_script(_script("close"))
        self._raise = client.register_script(_script("raise", entries=False))
        self._tokens = client.register_script(_script("tokens", entries=False))

    # -- the request path ------------------------------------------------------

    def admit(
        self,
        key_hash: str,
        call_id: str,
        now: datetime,
        lease_calls: int = 1,
        lease_seconds: float = 0,
        returning: Lease | None = None,
        tokens: int = 0,
        ahead: bool = False,
    ) -> Admission:
        """Decide one metered call in one round trip: the script reads the key's record,
        finds each budget's current period, and checks and reserves atomically. Far
        from every hard limit it reserves up to ``lease_calls`` calls (a lease, for
        ``lease_seconds``); ``returning`` is an earlier lease whose unused calls go back.
        ``tokens`` is what the call reserves under a tokens-per-minute limit. ``ahead``:
        a lease taken before its calls come, or nothing (no call to admit alone)."""
        today = now.astimezone(UTC).date()
        previous = (today.replace(day=1) - timedelta(days=1)).day
        result = self._admit(
            keys=[PREFIX + "key:" + key_hash, LOADED],
            args=[
                now.timestamp(),
                call_id,
                now.timestamp() + lease_seconds + self.ttl,
                _KEEP_RESERVATIONS + self.ttl,
                f"{today:%Y%m%d}",
                today.year,
                today.month,
                today.day,
                calendar.monthrange(today.year, today.month)[1],
                previous,
                -lease_calls if ahead else lease_calls,
                LEASE_SHARE,
                returning.id if returning else "",
                returning.unused if returning else 0,
                tokens,
                RATE_LEASE_SHARE,
                RATE_LEASE_SIZES,
                (returning.tokens_left or 0) if returning else 0,
                *(returning.reserved if returning else ()),
            ],
        )
        code = int(result[0])
        if code == -4:
            return Admission("rate_limited", rate=json.loads(result[1]))
        if code < 0:
            return Admission(_VERDICTS[code])
        if code > 0:
            rule = _rules(result[1])[code - 1]
            return Admission("refused", rule, rule.period_at(now))
        calls, reserved = int(result[1]), tuple(k.decode() for k in result[3:])
        rate = json.loads(result[2]) if result[2] else None
        held = tokens if rate is not None and "tokens" in rate else 0
        if calls == 1:
            return Admission(
                "admitted", reserved=reserved, call=call_id, rate=rate, tokens_held=held
            )
        # A lease never outlives the UTC day (every period starts at a midnight), nor
        # the minute of the rate-limit windows it counts in.
        midnight = datetime.combine(today + timedelta(days=1), datetime.min.time(), UTC)
        until = min(now.timestamp() + lease_seconds, midnight.timestamp())
        lease = Lease(call_id, calls, reserved, until, used_at=now.timestamp())
        if rate is not None:
            lease.until = min(until, now.timestamp() + rate["reset"])
            lease.rate = _before(rate, tokens, now.timestamp())
            lease.estimate = tokens
            if "tokens" in rate:
                lease.tokens_left = int(rate["pool"])
                lease.tokens_taken = tokens
        return Admission(
            "admitted",
            reserved=reserved,
            call=f"{call_id}.0",
            lease=lease,
            rate=rate,
            tokens_held=held,
        )

    def close(self, lease: Lease) -> None:
        """Give back what a lease did not use (budgets' reservations, windows' counts)."""
        tokens = lease.tokens_left or 0
        if (lease.reserved or lease.rate is not None) and (lease.unused > 0 or tokens > 0):
            self._close(keys=list(lease.reserved), args=[lease.id, lease.unused, tokens])

    def release(self, reserved: Sequence[str], call_ids: Sequence[str]) -> None:
        """Drop these calls' reservations (pairs of keys: lapse times, amounts); once."""
        if reserved and call_ids:
            self._release(keys=list(reserved), args=list(call_ids))

    def settle_tokens(self, used: Sequence[tuple[str, int, int]]) -> None:
        """Move each call's tokens-per-minute window from what it reserved to what its
        event used (call id, tokens used, tokens reserved); once per call."""
        if used:
            self._tokens(keys=[], args=[value for triple in used for value in triple])

    # -- the worker --------------------------------------------------------------

    def settle(
        self,
        rule: Rule,
        period: Period,
        spent: Decimal,
        estimate_units: int,
        call_ids: Iterable[str],
        now: datetime,
    ) -> None:
        """Mirror the period's spend from PostgreSQL and the estimate a call reserves,
        and release the recorded calls."""
        spend, at, resv, avg = rule.keys(period)
        spent_units = to_units(rule.metric, spent)
        expiry = self._expiry(period, now)
        self._raise(keys=[spend, avg], args=[spent_units, estimate_units, expiry])
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
                    "limits": json.dumps([list(limit) for limit in record.limits]),
                },
            )
        pipe.execute()

    def mark_loaded(self) -> None:
        self.redis.set(LOADED, "1")


def _before(rate: dict[str, Any], tokens: int, now: float) -> dict[str, Any]:
    """The windows' figures before the call that took a lease (the script reports
    them after it), and when they end (unix time)."""
    before: dict[str, Any] = {"ends": now + rate["reset"]}
    if "requests" in rate:
        before["requests"] = [rate["requests"][0], rate["requests"][1] + 1]
    if "tokens" in rate:
        before["tokens"] = [rate["tokens"][0], rate["tokens"][1] + tokens]
    return before


def _rules(encoded: bytes) -> tuple[Rule, ...]:
    return tuple(Rule(*values) for values in json.loads(encoded))
