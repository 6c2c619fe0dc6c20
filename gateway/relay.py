"""Relaying a worker's answer to the client: whole for plain JSON, event by event for SSE.

A stream is passed through as it arrives, cut only at SSE event boundaries so that a client never
sees half an event. If the worker fails mid-stream the client gets a clean SSE error event and
``[DONE]``; a client that disconnects cancels the upstream request (the worker aborts it).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Coroutine
from typing import Any, TypeVar

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from gateway.errors import ApiError, UpstreamError, error_body
from gateway.request_context import RequestContext, finish_request
from gateway.upstream.pool import UpstreamReply, UpstreamStreamError

T = TypeVar("T")

CLIENT_CLOSED_REQUEST = 499  # logged only; the client is gone
_EVENT_END = b"\n\n"


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


async def relay_reply(ctx: RequestContext, reply: UpstreamReply, max_response_bytes: int) -> Response:
    headers = {"x-request-id": ctx.request_id}
    if reply.status_code == 200 and reply.content_type.startswith("text/event-stream"):
        headers["cache-control"] = "no-cache"
        return StreamingResponse(relay_events(ctx, reply), media_type="text/event-stream", headers=headers)
    try:
        body = await reply.read(max_response_bytes)
    except UpstreamStreamError:
        raise UpstreamError() from None
    finally:
        await reply.aclose()
    finish_request(ctx, reply.status_code)
    return Response(body, status_code=reply.status_code, media_type=reply.content_type, headers=headers)


async def relay_events(ctx: RequestContext, reply: UpstreamReply) -> AsyncIterator[bytes]:
    """The worker's SSE events as they arrive; an interrupted stream ends with an error event."""
    pending = b""
    status = 200
    code: str | None = None
    try:
        async for chunk in reply.chunks():
            pending += chunk
            cut = pending.rfind(_EVENT_END)
            if cut >= 0:
                yield pending[: cut + 2]
                pending = pending[cut + 2 :]
        if pending.strip():
            yield pending  # a final event the worker did not terminate: pass it through as sent
    except UpstreamStreamError:
        status, code = 502, "upstream_stream_interrupted"
        yield stream_error_event(code)
    except BaseException:
        status, code = CLIENT_CLOSED_REQUEST, "client_disconnected"
        raise
    finally:
        await reply.aclose()
        finish_request(ctx, status, code)


def stream_error_event(code: str) -> bytes:
    error = UpstreamError("The inference worker failed while streaming the answer.", code=code)
    payload = json.dumps(error_body(error.message, error.error_type, error.code))
    return f"data: {payload}\n\ndata: [DONE]\n\n".encode()
