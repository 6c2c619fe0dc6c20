"""PII redaction of the worker's answers: SSE streams event by event, and whole JSON bodies.

A stream is read as SSE events (split at blank lines, whatever the byte chunking). Each
``data:`` event with ``choices`` has its text, ``choices[i].delta.content`` (chat) or
``choices[i].text`` (completions), replaced by what that choice's ``StreamRedactor`` may release
so far; the held rest follows in later events, and all of it by the event carrying the choice's
``finish_reason`` (or before ``[DONE]``, or when the stream ends). Other fields pass unchanged,
except ``logprobs``, which spell out the unredacted tokens and so are dropped (set to null).
Events without choices (usage, errors) and comments pass through as they are.

Every analysis runs on the analyzer's threads with its timeout. If one fails or times out, the
client gets an SSE error event (code ``guard_unavailable``) and ``[DONE]``, and nothing held back is
released; with ``fail_open`` the held text and the rest of the stream pass through unredacted.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterable, AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from gateway.errors import error_body
from gateway.guards.pii import GuardUnavailable
from gateway.guards.redaction import Redactor
from gateway.guards.stream_redactor import StreamRedactor

logger = logging.getLogger(__name__)

GUARD_MESSAGE = "The answer could not be checked for personal data, so the rest of it was withheld."
_DONE = b"data: [DONE]\n\n"


def guard_error_event() -> bytes:
    """The SSE error event and ``[DONE]`` that end a stream the PII guard could not check."""
    payload = json.dumps(error_body(GUARD_MESSAGE, "server_error", GuardUnavailable.default_code))
    return f"data: {payload}\n\n".encode() + _DONE


@dataclass(slots=True)
class _Choice:
    """One choice of the answer: its stream redactor, and (for failing open) what it received."""

    stream: StreamRedactor
    last: dict[str, Any]  # the choice's latest chunk, the template for a closing one
    raw: str = ""  # text received that was fed to the redactor successfully
    released: int = 0  # how much of ``raw`` went out, redacted
    finished: bool = False


class SseRedaction:
    """One per streamed answer: ``async for chunk in SseRedaction(redactor).events(upstream)``.
    After the stream, ``failed`` tells whether the guard failed (for the audit record) and
    ``redactor.counts`` what was redacted.

    State changes of an event are kept only once the whole event is through the guard, so a
    failure leaves the state as it was before that event; failing open then sends what each
    choice held, unredacted, followed by the failed event as the worker sent it.
    """

    def __init__(self, redactor: Redactor, *, fail_open: bool = False) -> None:
        self.redactor = redactor
        self.fail_open = fail_open
        self.failed = False
        self._choices: dict[int, _Choice] = {}

    async def events(self, upstream: AsyncIterable[bytes]) -> AsyncIterator[bytes]:
        pending = b""
        async for chunk in upstream:
            pending += chunk
            while (cut := _event_end(pending)) is not None:
                event, pending = pending[: cut[0]], pending[cut[1] :]
                out = await self._guarded(event)
                if out:
                    yield out
                if self.failed and not self.fail_open:
                    return
        if pending.strip():
            out = await self._guarded(pending.rstrip(b"\r\n"))
            if out:
                yield out
            if self.failed and not self.fail_open:
                return
        if not self.failed:
            out = await self._guarded(None)
            if out:
                yield out

    async def _guarded(self, event: bytes | None) -> bytes:
        """The event redacted (None: close every open choice), or what a guard failure sends."""
        original = b"" if event is None else event + b"\n\n"
        if self.failed:
            return original  # failed open earlier: the rest passes through
        try:
            return await self._event(event) if event is not None else await self._close_all()
        except GuardUnavailable:
            self.failed = True
            logger.warning("pii guard failed mid-stream", extra={"fail_open": self.fail_open})
            if not self.fail_open:
                return guard_error_event()
            return self._held_raw() + original

    async def _event(self, event: bytes) -> bytes:
        lines = event.decode("utf-8", errors="replace").splitlines()
        data_lines = [line[5:].removeprefix(" ") for line in lines if line.startswith("data:")]
        if not data_lines:
            return event + b"\n\n"  # a comment or keep-alive
        data = "\n".join(data_lines)
        if data.strip() == "[DONE]":
            return await self._close_all() + _DONE
        try:
            payload = json.loads(data)
        except ValueError:
            raise GuardUnavailable() from None  # text that cannot be parsed must not pass unchecked
        if not isinstance(payload, dict) or not isinstance(payload.get("choices"), list):
            return event + b"\n\n"
        commits = []
        for choice in payload["choices"]:
            if isinstance(choice, dict):
                commits.append(await self._choice(payload, choice))
        for commit in commits:
            commit()
        return _sse(payload)

    async def _choice(self, payload: dict[str, Any], choice: dict[str, Any]) -> Callable[[], None]:
        index = choice.get("index", 0)
        index = index if isinstance(index, int) else 0
        state = self._choices.get(index) or _Choice(StreamRedactor(self.redactor), payload)
        holder, key = _text_slot(choice)
        text = holder.get(key) if holder is not None else None
        text = text if isinstance(text, str) and not state.finished else ""
        released = await self.redactor.analyzer.run(state.stream.feed, text) if text else ""
        finishing = choice.get("finish_reason") is not None and not state.finished
        if finishing:
            released += await self.redactor.analyzer.run(state.stream.finish)
        if holder is not None and (key in holder or released):
            holder[key] = released
        if "logprobs" in choice:
            choice["logprobs"] = None
        position = state.stream.released

        def commit() -> None:
            state.raw += text
            state.released = position
            state.finished = state.finished or finishing
            state.last = payload
            self._choices[index] = state

        return commit

    async def _close_all(self) -> bytes:
        """Events with the held text of every choice that has not finished yet."""
        out = b""
        closed = []
        for index, state in self._choices.items():
            if state.finished:
                continue
            rest = await self.redactor.analyzer.run(state.stream.finish)
            closed.append(state)
            if rest:
                out += _sse(_closing_chunk(state.last, index, rest))
        for state in closed:
            state.finished = True
            state.released = len(state.raw)
        return out

    def _held_raw(self) -> bytes:
        """Failing open: what each unfinished choice received and has not sent, unredacted."""
        out = b""
        for index, state in self._choices.items():
            rest = state.raw[state.released :]
            if not state.finished and rest:
                out += _sse(_closing_chunk(state.last, index, rest))
            state.finished = True
        return out


def _event_end(buffer: bytes) -> tuple[int, int] | None:
    """(end of the first complete event, start of the next) in ``buffer``, if there is one."""
    ends = [(at, at + len(sep)) for sep in (b"\n\n", b"\r\n\r\n") if (at := buffer.find(sep)) >= 0]
    return min(ends) if ends else None


def _text_slot(choice: dict[str, Any]) -> tuple[dict[str, Any] | None, str]:
    delta = choice.get("delta")
    if isinstance(delta, dict):
        return delta, "content"
    message = choice.get("message")
    if isinstance(message, dict):
        return message, "content"
    return choice, "text"


def _closing_chunk(last: dict[str, Any], index: int, text: str) -> dict[str, Any]:
    chunk = {key: value for key, value in last.items() if key in ("id", "object", "created", "model")}
    if last.get("object") == "text_completion":
        choice: dict[str, Any] = {"index": index, "text": text, "logprobs": None, "finish_reason": None}
    else:
        choice = {"index": index, "delta": {"content": text}, "logprobs": None, "finish_reason": None}
    return {**chunk, "choices": [choice]}


def _sse(payload: dict[str, Any]) -> bytes:
    return f"data: {json.dumps(payload, separators=(',', ':'), ensure_ascii=False)}\n\n".encode()


def redact_completion_body(body: bytes, redactor: Redactor) -> bytes:
    """A whole (non-streamed) chat or completions answer with every choice's text redacted and
    ``logprobs`` dropped. Bodies that are not a JSON object with choices (errors) are returned as
    they are. Synchronous: run it with ``redactor.analyzer.run(redact_completion_body, body, redactor)``."""
    try:
        payload = json.loads(body)
    except ValueError:
        return body
    if not isinstance(payload, dict) or not isinstance(payload.get("choices"), list):
        return body
    for choice in payload["choices"]:
        if not isinstance(choice, dict):
            continue
        holder, key = _text_slot(choice)
        value = holder.get(key) if holder is not None else None
        if holder is not None and isinstance(value, str):
            holder[key] = redactor.redact(value).text
        elif holder is not None and isinstance(value, list):  # content as a list of parts
            for part in value:
                if isinstance(part, dict) and isinstance(part.get("text"), str):
                    part["text"] = redactor.redact(part["text"]).text
        if "logprobs" in choice:
            choice["logprobs"] = None
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()


async def redact_completion_body_async(body: bytes, redactor: Redactor) -> bytes:
    """``redact_completion_body`` on the analyzer's threads, with its timeout."""
    return await redactor.analyzer.run(redact_completion_body, body, redactor)
