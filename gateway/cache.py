"""The response cache on Redis: identity-scoped names, sealed values, single-flight misses.

Per request: ``lookup`` says hit, miss or bypass (the ``x-cache`` header); on a miss the caller
asks the worker and must then call ``complete`` exactly once (in a ``finally``), with the answer
to store or ``None``. Identical misses are coalesced: in one process the later ones wait on the
first one's future; across replicas a short Redis claim (``SET NX``) makes the others poll for the
entry. Nobody waits longer than ``single_flight_wait_s``; then they ask the worker themselves. While
Redis is down every lookup is a bypass and nothing waits on it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel

from gateway.cache_crypto import CacheKeyring
from gateway.cache_entry import CachedAnswer, decode_answer, encode_answer
from gateway.cache_keys import CacheScope, entry_name, is_deterministic, key_material, wants_fresh
from gateway.policy.schema import Cache
from gateway.redis_settings import CacheSettings
from gateway.redis_state import REDIS_ERRORS, RedisState

logger = logging.getLogger(__name__)

CacheStatus = Literal["hit", "miss", "bypass"]
_POLL_FIRST_S, _POLL_MAX_S = 0.01, 0.1

# Hit: 1 and the value. Else claim the single-flight lock: 2 if claimed, 0 if another holds it.
_CLAIM = """
local value = redis.call('GET', KEYS[1])
if value then return {1, value} end
if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then return {2} end
return {0}
"""
# Store the value (when given) and release our claim (only if it is still ours).
_FINISH = """
if ARGV[2] ~= '' then redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3]) end
if redis.call('GET', KEYS[2]) == ARGV[1] then redis.call('DEL', KEYS[2]) end
return 1
"""


@dataclass(slots=True)
class CacheStats:
    hits: int = 0
    misses: int = 0
    bypasses: int = 0
    coalesced: int = 0  # hits served by waiting for an identical request in flight
    wait_timeouts: int = 0  # waits that ran out and fell through to the worker
    stored: int = 0
    too_large: int = 0
    unreadable: int = 0  # values that failed to open (rotated-out key, tampering): treated as misses


@dataclass(slots=True)
class Lookup:
    """The outcome of one lookup; pass it back to ``complete``."""

    status: CacheStatus
    answer: CachedAnswer | None = None  # set on a hit
    reason: str = ""  # why a bypass: disabled, client, nondeterministic, unavailable
    name: str = ""
    ttl_ms: int = 0
    max_bytes: int = 0
    _flight: asyncio.Future[CachedAnswer | None] | None = field(default=None, repr=False)
    _claim: str = field(default="", repr=False)
    _done: bool = field(default=False, repr=False)


class ResponseCache:
    def __init__(
        self, redis: RedisState, settings: CacheSettings, keyring: CacheKeyring | None = None
    ) -> None:
        self.redis = redis
        self.settings = settings
        self.keyring = keyring if keyring is not None else CacheKeyring.from_settings(settings)
        self.stats = CacheStats()
        self._flights: dict[str, tuple[asyncio.Future[CachedAnswer | None], float]] = {}
        self._claim = redis.client.register_script(_CLAIM)
        self._finish = redis.client.register_script(_FINISH)

    def entry_key(self, scope: CacheScope, endpoint: str, request: BaseModel | Mapping[str, Any]) -> str:
        """The Redis key of the entry for this request in this scope."""
        name = entry_name(self.keyring.name_key, key_material(scope, endpoint, request))
        return self.redis.key("c", "{" + name + "}")  # the hash tag keeps the claim key in its slot

    async def lookup(
        self,
        scope: CacheScope,
        policy: Cache,
        endpoint: str,
        request: BaseModel | Mapping[str, Any],
        *,
        cache_control: str | None = None,
    ) -> Lookup:
        """Hit, miss (the caller computes, then ``complete``) or bypass (the caller computes, no store)."""
        reason = self._bypass_reason(policy, request, cache_control)
        if reason:
            self.stats.bypasses += 1
            return Lookup("bypass", reason=reason)
        name = self.entry_key(scope, endpoint, request)
        lookup = Lookup("miss", name=name, ttl_ms=policy.ttl_s * 1000, max_bytes=policy.max_entry_bytes)
        flight = self._flights.get(name)
        if flight is not None and time.monotonic() - flight[1] < self.settings.single_flight_lock_s:
            answer = await self._wait(flight[0])
            if answer is None and not self.redis.available:  # Redis failed the request we waited for
                self.stats.bypasses += 1
                return Lookup("bypass", reason="unavailable")
            return self._counted(lookup, answer, coalesced=True)
        future: asyncio.Future[CachedAnswer | None] = asyncio.get_running_loop().create_future()
        self._flights[name] = (future, time.monotonic())
        lookup._flight = future
        try:
            answer, lookup._claim = await self._claim_or_wait(name)
        except REDIS_ERRORS as exc:
            self.redis.failed(exc)
            self._land(lookup, None)
            self.stats.bypasses += 1
            return Lookup("bypass", reason="unavailable")
        except BaseException:
            self._land(lookup, None)
            raise
        if answer is not None:
            self._land(lookup, answer)
        return self._counted(lookup, answer, coalesced=False)

    async def complete(self, lookup: Lookup, answer: CachedAnswer | None) -> None:
        """After a miss: store ``answer`` (if given, status 200 and within the size cap), release the claim.

        Safe to call for any lookup and more than once; only the first call after a miss acts.
        """
        if lookup.status != "miss" or lookup._done:
            return
        lookup._done = True
        if answer is not None and (answer.status != 200 or (not answer.body and not answer.events)):
            answer = None
        blob = b""
        if answer is not None:
            plaintext = encode_answer(answer)
            if len(plaintext) > lookup.max_bytes:
                self.stats.too_large += 1
                answer = None
            else:
                blob = self.keyring.seal(lookup.name.encode(), plaintext)
        self._land(lookup, answer)
        if not (blob or lookup._claim) or not self.redis.available:
            return
        claim_key = self._claim_key(lookup.name)
        try:
            await self._finish(keys=[lookup.name, claim_key], args=[lookup._claim, blob, lookup.ttl_ms])
        except REDIS_ERRORS as exc:
            self.redis.failed(exc)
            return
        if blob:
            self.stats.stored += 1

    async def get_or_compute(
        self,
        scope: CacheScope,
        policy: Cache,
        endpoint: str,
        request: BaseModel | Mapping[str, Any],
        compute: Callable[[], Awaitable[CachedAnswer]],
        *,
        cache_control: str | None = None,
    ) -> tuple[CachedAnswer, CacheStatus]:
        """Lookup, compute on a miss or bypass, store: for answers that are not streamed to the client."""
        lookup = await self.lookup(scope, policy, endpoint, request, cache_control=cache_control)
        if lookup.answer is not None:
            return lookup.answer, lookup.status
        try:
            answer = await compute()
        except BaseException:
            await self.complete(lookup, None)
            raise
        await self.complete(lookup, answer)
        return answer, lookup.status

    def _bypass_reason(
        self, policy: Cache, request: BaseModel | Mapping[str, Any], cache_control: str | None
    ) -> str:
        if not policy.enabled:
            return "disabled"
        if policy.client_no_cache and wants_fresh(cache_control):
            return "client"
        if not policy.allow_nondeterministic and not is_deterministic(request):
            return "nondeterministic"
        if not self.redis.available:
            return "unavailable"
        return ""

    async def _claim_or_wait(self, name: str) -> tuple[CachedAnswer | None, str]:
        """A stored answer, or our claim on computing it, or (after waiting for another replica) neither."""
        token = os.urandom(16).hex()
        lock_ms = int(self.settings.single_flight_lock_s * 1000)
        deadline = time.monotonic() + self.settings.single_flight_wait_s
        pause = _POLL_FIRST_S
        while True:
            reply = await self._claim(keys=[name, self._claim_key(name)], args=[token, lock_ms])
            if reply[0] == 1:
                answer = self._open(name, reply[1])
                if answer is not None:
                    return answer, ""
                # Unreadable (rotated-out key or tampered): overwrite it like a miss, under a claim.
                await self.redis.client.delete(name)
                continue
            if reply[0] == 2:
                return None, token
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self.stats.wait_timeouts += 1
                return None, ""
            await asyncio.sleep(min(pause, remaining))
            pause = min(pause * 1.5, _POLL_MAX_S)

    async def _wait(self, future: asyncio.Future[CachedAnswer | None]) -> CachedAnswer | None:
        try:
            return await asyncio.wait_for(asyncio.shield(future), self.settings.single_flight_wait_s)
        except TimeoutError:
            self.stats.wait_timeouts += 1
            return None

    def _open(self, name: str, sealed: bytes) -> CachedAnswer | None:
        plaintext = self.keyring.open(name.encode(), sealed)
        answer = decode_answer(plaintext) if plaintext is not None else None
        if answer is None:
            self.stats.unreadable += 1
        return answer

    def _land(self, lookup: Lookup, answer: CachedAnswer | None) -> None:
        """Hand the outcome to everyone waiting in this process, and end the flight."""
        future = lookup._flight
        if future is None:
            return
        lookup._flight = None
        if not future.done():
            future.set_result(answer)
        flight = self._flights.get(lookup.name)
        if flight is not None and flight[0] is future:
            del self._flights[lookup.name]

    def _counted(self, lookup: Lookup, answer: CachedAnswer | None, *, coalesced: bool) -> Lookup:
        if answer is None:
            self.stats.misses += 1
            return lookup
        self.stats.hits += 1
        self.stats.coalesced += coalesced
        lookup.status, lookup.answer = "hit", answer
        return lookup

    def _claim_key(self, name: str) -> str:
        return name + ":f"
