"""Relaying a worker's answer to the client: whole for plain JSON, event by event for SSE.

A stream is passed through as it arrives, cut only at SSE event boundaries so that a client never
sees half an event. If the worker fails mid-stream the client gets a clean SSE error event and
``[DONE]``; a client that disconnects cancels the upstream request (the worker aborts it). The
request is finished (cache, budget, audit, log) before the last event or the whole answer is sent.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import Any, TypeVar

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from gateway.cache_entry import CachedAnswer, StreamCapture
from gateway.errors import ApiError, UpstreamError, error_body
from gateway.request_context import RequestContext, Usage
from gateway.upstream.pool import UpstreamReply, UpstreamStreamError

T = TypeVar("T")
Finish = Callable[[RequestContext, int, str | None, CachedAnswer | None], Awaitable[None]]

CLIENT_CLOSED_REQUEST = 499  # logged only; the client is gone
_EVENT_END = b"\n\n"
DONE_EVENT = b"data: [DONE]\n\n"


class ClientDisconnected(ApiError):
    """The client went away while the gateway waited for the worker (nobody receives this error)."""

    status_code = CLIENT_CLOSED_REQUEST
    error_type = "invalid_request_error"
    default_code = "client_disconnected"
    default_message = "The client closed the connection."


async def until_disconnected(request: Request, work: Coroutine[Any, Any, T]) -> T:
    """Run ``work`` (the body has been read), cancelling it if the client disconnects first."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_wait_for_disconnect(request))
    try:
        await asyncio.wait((task, watcher), return_when=asyncio.FIRST_COMPLETED)
    except BaseException:
        task.cancel()
        raise
    finally:
        watcher.cancel()
    if not task.done():
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        raise ClientDisconnected
    return task.result()


async def _wait_for_disconnect(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def relay_reply(
    ctx: RequestContext, reply: UpstreamReply, max_response_bytes: int, finish: Finish, cache_max_bytes: int
) -> Response:
    if reply.status_code == 200 and reply.content_type.startswith("text/event-stream"):
        capture = StreamCapture(reply.content_type, cache_max_bytes)
        events = relay_events(ctx, reply, finish, capture)
        headers = {**ctx.response_headers(), "cache-control": "no-cache"}
        return StreamingResponse(events, media_type="text/event-stream", headers=headers)
    try:
        body = await reply.read(max_response_bytes)
    except UpstreamStreamError:
        raise UpstreamError() from None
    finally:
        await reply.aclose()
    if reply.status_code == 200:
        ctx.usage = usage_of(body)
    answer = CachedAnswer(reply.content_type, body=body, status=reply.status_code)
    await finish(ctx, reply.status_code, None, answer)
    return Response(
        body, status_code=reply.status_code, media_type=reply.content_type, headers=ctx.response_headers()
    )


async def relay_events(
    ctx: RequestContext, reply: UpstreamReply, finish: Finish, capture: StreamCapture
) -> AsyncIterator[bytes]:
    """The worker's SSE events as they arrive; the request is finished before ``[DONE]`` goes out."""
    status, code = 200, None
    try:
        async for event in _usage_filtered(ctx, sse_events(reply.chunks())):
            if event == DONE_EVENT:
                break
            capture.add(event)
            yield event
    except UpstreamStreamError:
        status, code = 502, "upstream_stream_interrupted"
        await finish(ctx, status, code, None)
        yield stream_error_event(code)
        return
    except BaseException:
        await asyncio.shield(finish(ctx, CLIENT_CLOSED_REQUEST, "client_disconnected", None))
        raise
    finally:
        await reply.aclose()
    capture.add(DONE_EVENT)
    await finish(ctx, status, code, capture.answer())
    yield DONE_EVENT


async def sse_events(chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """Complete SSE events (each ending with a blank line) from arbitrarily cut chunks."""
    pending = b""
    async for chunk in chunks:
        pending += chunk
        while (cut := pending.find(_EVENT_END)) >= 0:
            yield pending[: cut + 2]
            pending = pending[cut + 2 :]
    if pending.strip():
        yield pending + _EVENT_END  # a final event the worker did not terminate


async def _usage_filtered(ctx: RequestContext, events: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """Take the usage from the usage chunk (always requested upstream); pass it on only if asked for."""
    async for event in events:
        if b'"usage"' in event and event.startswith(b"data: {"):
            usage = usage_of(event[6:])
            if usage is not None:
                ctx.usage = usage
                if not ctx.client_wants_usage and b'"choices":[]' in event.replace(b" ", b""):
                    continue
        yield event


def usage_of(body: bytes) -> Usage | None:
    """The ``usage`` of an OpenAI answer or usage chunk, if it has a well-formed one."""
    try:
        usage = json.loads(body).get("usage")
        return Usage(int(usage["prompt_tokens"]), int(usage["completion_tokens"]))
    except (ValueError, TypeError, KeyError, AttributeError):
        return None


def replay(ctx: RequestContext, answer: CachedAnswer) -> Response:
    """A cached answer, as a stream if it was one."""
    if answer.streamed:
        events = answer.events

        async def stream() -> AsyncIterator[bytes]:
            for event in events:
                yield event

        headers = {**ctx.response_headers(), "cache-control": "no-cache"}
        return StreamingResponse(stream(), media_type=answer.content_type, headers=headers)
    return Response(
        answer.body, status_code=answer.status, media_type=answer.content_type, headers=ctx.response_headers()
    )


def stream_error_event(code: str) -> bytes:
    error = UpstreamError("The inference worker failed while streaming the answer.", code=code)
    payload = json.dumps(error_body(error.message, error.error_type, error.code))
    return f"data: {payload}\n\n".encode() + DONE_EVENT
