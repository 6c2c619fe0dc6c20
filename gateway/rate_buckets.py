"""GCRA buckets, in Redis (one Lua script per operation) and in process (the same arithmetic).

A bucket admits ``limit`` units per ``period`` and refills continuously; a full bucket admits a
burst of ``limit``. Its state is one number, the theoretical arrival time (TAT, ms): admitting
``cost`` units moves it to ``max(TAT, now) + cost * period / limit``, allowed while that stays
within ``now + period``. Requests per minute are buckets with cost 1; token budgets are buckets
whose cost is the tokens reserved. ``acquire`` checks every bucket of a request and charges all of
them or none, atomically; ``adjust`` moves buckets by a signed number of units (a refund gives
back what a request did not use, never beyond a full bucket; a negative refund is debt).
Both backends take Redis's clock or the process's wall clock in milliseconds.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from redis.asyncio import Redis

Kind = Literal["requests", "tokens"]


@dataclass(frozen=True, slots=True)
class Bucket:
    key: str
    limit: int
    period_ms: int
    kind: Kind
    label: str  # what people call it: "tokens per minute for your tenant"
    code: str  # the error code when it refuses: "tokens_per_minute_exceeded"


@dataclass(frozen=True, slots=True)
class BucketState:
    remaining: int  # units a request could still take now
    reset_ms: int  # until the bucket is full again


@dataclass(frozen=True, slots=True)
class Outcome:
    allowed: bool
    retry_after_ms: int  # when refused: until every bucket could take the request
    worst: int  # index of the bucket that refused for longest (0 when allowed)
    states: tuple[BucketState, ...]


_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local n = #KEYS
local base, after = {}, {}
local wait, worst = 0, 0
for i = 1, n do
  local limit, period, cost = tonumber(ARGV[3*i-2]), tonumber(ARGV[3*i-1]), tonumber(ARGV[3*i])
  local tat = tonumber(redis.call('GET', KEYS[i]) or now)
  if tat < now then tat = now end
  base[i] = tat
  after[i] = tat + cost * period / limit
  local over = after[i] - now - period
  if over > wait then wait, worst = over, i - 1 end
end
local out = {0, math.ceil(wait), worst}
if wait <= 0 then
  out[1] = 1
  for i = 1, n do
    redis.call('SET', KEYS[i], string.format('%.3f', after[i]), 'PX', math.ceil(after[i] - now) + 1)
    base[i] = after[i]
  end
end
for i = 1, n do
  local limit, period = tonumber(ARGV[3*i-2]), tonumber(ARGV[3*i-1])
  table.insert(out, math.max(0, math.floor((period - (base[i] - now)) * limit / period + 1e-9)))
  table.insert(out, math.ceil(base[i] - now))
end
return out
"""

_ADJUST = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
for i = 1, #KEYS do
  local limit, period, delta = tonumber(ARGV[3*i-2]), tonumber(ARGV[3*i-1]), tonumber(ARGV[3*i])
  local tat = tonumber(redis.call('GET', KEYS[i]) or now)
  if tat < now then tat = now end
  local new = math.max(tat + delta * period / limit, now)
  if new > now then
    redis.call('SET', KEYS[i], string.format('%.3f', new), 'PX', math.ceil(new - now) + 1)
  else
    redis.call('DEL', KEYS[i])
  end
end
return 1
"""


def _args(buckets: Sequence[Bucket], amounts: Sequence[int]) -> list[int]:
    return [
        value for b, amount in zip(buckets, amounts, strict=True) for value in (b.limit, b.period_ms, amount)
    ]


class RedisBuckets:
    """Buckets shared by every replica. All keys of one call must share a hash slot (Redis Cluster)."""

    def __init__(self, client: Redis) -> None:
        self._acquire = client.register_script(_ACQUIRE)
        self._adjust = client.register_script(_ADJUST)

    async def acquire(self, buckets: Sequence[Bucket], costs: Sequence[int]) -> Outcome:
        reply = await self._acquire(keys=[b.key for b in buckets], args=_args(buckets, costs))
        values = [int(v) for v in reply]
        states = tuple(BucketState(values[i], values[i + 1]) for i in range(3, len(values), 2))
        return Outcome(values[0] == 1, values[1], values[2], states)

    async def adjust(self, buckets: Sequence[Bucket], deltas: Sequence[int]) -> None:
        if buckets:
            await self._adjust(keys=[b.key for b in buckets], args=_args(buckets, deltas))


class LocalBuckets:
    """The same buckets in this process only: the fallback while Redis is unreachable.

    ``fraction`` scales every limit (1/N for N replicas keeps the total near the configured one).
    """

    def __init__(self, fraction: float = 1.0, max_keys: int = 100_000) -> None:
        self.fraction = fraction
        self.max_keys = max_keys
        self._tats: dict[str, float] = {}

    def scaled(self, bucket: Bucket) -> Bucket:
        if self.fraction >= 1.0:
            return bucket
        limit = max(1, math.floor(bucket.limit * self.fraction))
        return Bucket(bucket.key, limit, bucket.period_ms, bucket.kind, bucket.label, bucket.code)

    async def acquire(self, buckets: Sequence[Bucket], costs: Sequence[int]) -> Outcome:
        now = time.time() * 1000
        self._prune(now)
        base = [max(self._tats.get(b.key, now), now) for b in buckets]
        after = [
            tat + cost * b.period_ms / b.limit for b, tat, cost in zip(buckets, base, costs, strict=True)
        ]
        wait, worst = 0.0, 0
        for index, (bucket, tat) in enumerate(zip(buckets, after, strict=True)):
            over = tat - now - bucket.period_ms
            if over > wait:
                wait, worst = over, index
        allowed = wait <= 0
        if allowed:
            for bucket, tat in zip(buckets, after, strict=True):
                self._tats[bucket.key] = tat
            base = after
        states = tuple(
            BucketState(
                max(0, math.floor((b.period_ms - (tat - now)) * b.limit / b.period_ms + 1e-9)),
                math.ceil(tat - now),
            )
            for b, tat in zip(buckets, base, strict=True)
        )
        return Outcome(allowed, math.ceil(wait), worst, states)

    async def adjust(self, buckets: Sequence[Bucket], deltas: Sequence[int]) -> None:
        now = time.time() * 1000
        for bucket, delta in zip(buckets, deltas, strict=True):
            tat = max(self._tats.get(bucket.key, now), now)
            new = max(tat + delta * bucket.period_ms / bucket.limit, now)
            if new > now:
                self._tats[bucket.key] = new
            else:
                self._tats.pop(bucket.key, None)

    def _prune(self, now: float) -> None:
        """Forget full buckets once the table grows (they hold no state worth keeping)."""
        if len(self._tats) < self.max_keys:
            return
        self._tats = {key: tat for key, tat in self._tats.items() if tat > now}
