"""The last step of every request, whichever way it ends: store, settle, record, log.

It runs before the final bytes reach the client (the last SSE event, or the whole JSON answer), so
that an acknowledged request has always been accounted for. It runs at most once per request.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.cache import ResponseCache
from gateway.cache_entry import CachedAnswer
from gateway.limits import Limiter
from gateway.request_context import RequestContext, log_request


@dataclass(slots=True)
class Finisher:
    cache: ResponseCache
    limiter: Limiter

    async def __call__(
        self, ctx: RequestContext, status: int, code: str | None = None, answer: CachedAnswer | None = None
    ) -> None:
        if ctx.finished:
            return
        ctx.finished = True
        if ctx.lookup is not None:
            await self.cache.complete(ctx.lookup, answer if status == 200 else None)
        if ctx.reservation is not None:
            await self.limiter.settle(ctx.reservation, self._used_tokens(ctx, status))
        log_request(ctx, status, code)

    @staticmethod
    def _used_tokens(ctx: RequestContext, status: int) -> int | None:
        """What to charge: the worker's usage; nothing if it never ran; all of it if unknown."""
        if ctx.usage is not None:
            return ctx.usage.total
        if ctx.worker is None or (status >= 400 and status != 499):
            return 0  # refused or failed before the worker produced anything
        return None
