"""Relaying a worker's answer to the client: whole for plain JSON, event by event for SSE.

A stream is passed through as it arrives, cut only at SSE event boundaries so that a client never
sees half an event. If the worker fails mid-stream the client gets a clean SSE error event and
``[DONE]``; a client that disconnects cancels the upstream request (the worker aborts it). The
request is finished (cache, budget, audit, log) before the last event or the whole answer is sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import Any, TypeVar

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from gateway.cache_entry import CachedAnswer, StreamCapture
from gateway.errors import ApiError, UpstreamError, error_body
from gateway.guards.pii import GuardUnavailable
from gateway.guards.redaction import Redactor
from gateway.guards.sse_redaction import SseRedaction, redact_completion_body_async
from gateway.output_guard import count_redactions, guards_fail_open
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
    ctx: RequestContext,
    reply: UpstreamReply,
    *,
    max_response_bytes: int,
    finish: Finish,
    cache_max_bytes: int,
    redactor: Redactor | None,
) -> Response:
    if reply.status_code == 200 and reply.content_type.startswith("text/event-stream"):
        capture = StreamCapture(reply.content_type, cache_max_bytes)
        events = relay_events(ctx, reply, finish, capture, redactor)
        headers = {**ctx.response_headers(), "cache-control": "no-cache"}
        return StreamingResponse(events, media_type="text/event-stream", headers=headers)
    try:
        body = await reply.read(max_response_bytes)
    except UpstreamStreamError:
        raise UpstreamError() from None
    finally:
        await reply.aclose()
    if reply.status_code == 200:
        body = await _redacted_body(ctx, body, redactor)
        observe_answer(ctx, body)
    answer = CachedAnswer(reply.content_type, body=body, status=reply.status_code)
    await finish(ctx, reply.status_code, None, answer)
    headers = ctx.response_headers()
    if reply.status_code == 429 and reply.retry_after is not None and reply.retry_after.isdigit():
        headers["retry-after"] = reply.retry_after  # the worker's queue is full: when to come back
    return Response(body, status_code=reply.status_code, media_type=reply.content_type, headers=headers)


async def _redacted_body(ctx: RequestContext, body: bytes, redactor: Redactor | None) -> bytes:
    if redactor is None:
        return body
    try:
        return await redact_completion_body_async(body, redactor)
    except GuardUnavailable:
        if not guards_fail_open(ctx):
            raise
        return body
    finally:
        count_redactions(ctx, redactor)


async def relay_events(
    ctx: RequestContext,
    reply: UpstreamReply,
    finish: Finish,
    capture: StreamCapture,
    redactor: Redactor | None = None,
) -> AsyncIterator[bytes]:
    """The worker's SSE events as they arrive (redacted when the policy says so); the request is
    finished before ``[DONE]`` goes out."""
    chunks: AsyncIterator[bytes] = reply.chunks()
    guard = None
    if redactor is not None:
        guard = SseRedaction(redactor, fail_open=guards_fail_open(ctx))
        chunks = guard.events(chunks)
    try:
        async for event in _observed(ctx, sse_events(chunks)):
            if event == DONE_EVENT:
                break
            capture.add(event)
            yield event
    except UpstreamStreamError:
        error: ApiError = UpstreamError(
            "The inference worker failed while streaming the answer.", code="upstream_stream_interrupted"
        )
        with contextlib.suppress(ApiError):
            await finish(ctx, error.status_code, error.code, None)
        yield error_event(error)
        return
    except BaseException:
        with contextlib.suppress(ApiError):
            await asyncio.shield(finish(ctx, CLIENT_CLOSED_REQUEST, "client_disconnected", None))
        raise
    finally:
        await reply.aclose()
    count_redactions(ctx, redactor)
    capture.add(DONE_EVENT)
    failed = guard is not None and guard.failed and not guard.fail_open
    status, code = (GuardUnavailable.status_code, GuardUnavailable.default_code) if failed else (200, None)
    try:
        await finish(ctx, status, code, None if failed else capture.answer())
    except ApiError as refused:  # the request could not be recorded: no [DONE] without a record
        yield error_event(refused)
        return
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


async def _observed(ctx: RequestContext, events: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """Take the usage from the usage chunk (always requested upstream; passed on only if asked for)
    and, when the audit record needs it, the answer's text."""
    async for event in events:
        if not event.startswith(b"data: {"):
            yield event
            continue
        if b'"usage"' in event or ctx.collect_output:
            payload = _json_object(event[6:])
            usage = usage_of(payload)
            if usage is not None:
                ctx.usage = usage
                if not ctx.client_wants_usage and payload.get("choices") == []:
                    continue
            if ctx.collect_output:
                ctx.output_parts.extend(_choice_texts(payload, "delta"))
        yield event


def observe_answer(ctx: RequestContext, body: bytes) -> None:
    """Usage and (when the audit record needs it) the text of a whole JSON answer."""
    payload = _json_object(body)
    ctx.usage = usage_of(payload)
    if ctx.collect_output:
        ctx.output_parts = ["\n".join(_choice_texts(payload, "message"))]


def usage_of(payload: dict[str, Any]) -> Usage | None:
    """The ``usage`` of an OpenAI answer or usage chunk, if it has a well-formed one."""
    usage = payload.get("usage")
    try:
        return Usage(int(usage["prompt_tokens"]), int(usage["completion_tokens"]))  # type: ignore[index]
    except (ValueError, TypeError, KeyError):
        return None


def _json_object(data: bytes) -> dict[str, Any]:
    try:
        value = json.loads(data)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _choice_texts(payload: dict[str, Any], part: str) -> list[str]:
    """Chat ``choices[].{message|delta}.content`` or completions ``choices[].text``."""
    texts = []
    for choice in payload.get("choices") or ():
        if not isinstance(choice, dict):
            continue
        holder = choice.get(part)
        text = holder.get("content") if isinstance(holder, dict) else choice.get("text")
        if isinstance(text, str):
            texts.append(text)
    return texts


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


def error_event(error: ApiError) -> bytes:
    """An error as the last SSE event of a stream, followed by ``[DONE]``."""
    payload = json.dumps(error_body(error.message, error.error_type, error.code))
    return f"data: {payload}\n\n".encode() + DONE_EVENT
