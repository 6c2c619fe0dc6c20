"""Redacting the worker's answers: SSE streams (chat and completions, several choices, any byte
chunking), whole JSON bodies, and what the client gets when the guard fails mid-stream."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from gateway.guards.pii import PiiAnalyzer
from gateway.guards.redaction import Redactor
from gateway.guards.settings import PiiSettings
from gateway.guards.sse_redaction import SseRedaction, redact_completion_body, redact_completion_body_async
from gateway.policy.schema import PiiGuard

ANSWERS = [
    "Sure. Her address is maria.lopez@example.org and her mobile is +44 7700 900123, call after 5.",
    "The card on file is 4111 1111 1111 1111; the IBAN is GB82 WEST 1234 5698 7654 32. Done!",
]
SECRETS = ["maria.lopez@example.org", "+44 7700 900123", "4111 1111 1111 1111", "GB82 WEST 1234 5698 7654 32"]


@pytest.fixture(scope="module")
def analyzer() -> Iterator[PiiAnalyzer]:
    built = PiiAnalyzer(PiiSettings())
    yield built
    built.close()


def chunk(kind: str, index: int, text: str | None, finish: str | None = None) -> dict[str, Any]:
    choice: dict[str, Any] = {
        "index": index,
        "logprobs": {"content": [{"token": text}]},
        "finish_reason": finish,
    }
    if kind == "chat":
        choice["delta"] = {"content": text} if text is not None else {}
        obj = "chat.completion.chunk"
    else:
        choice["text"] = text or ""
        obj = "text_completion"
    return {"id": "x-1", "object": obj, "created": 1, "model": "m", "choices": [choice]}


def sse_stream(kind: str, answers: list[str], *, done: bool = True, finish: bool = True) -> bytes:
    """The worker's stream: the choices' tokens interleaved, then usage and [DONE]."""
    tokens = [[answer[i : i + 4] for i in range(0, len(answer), 4)] for answer in answers]
    events = []
    for step in range(max(len(t) for t in tokens)):
        for index, pieces in enumerate(tokens):
            if step < len(pieces):
                last = finish and step == len(pieces) - 1
                events.append(chunk(kind, index, pieces[step], "stop" if last else None))
    events.append(
        {"id": "x-1", "object": "chat.completion.chunk", "choices": [], "usage": {"total_tokens": 9}}
    )
    body = b"".join(f"data: {json.dumps(event)}\n\n".encode() for event in events)
    return body + (b"data: [DONE]\n\n" if done else b"")


async def upstream(body: bytes, size: int) -> AsyncIterator[bytes]:
    for start in range(0, len(body), size):
        yield body[start : start + size]
        await asyncio.sleep(0)


def run(sse: SseRedaction, source: AsyncIterator[bytes]) -> bytes:
    async def collect() -> bytes:
        return b"".join([piece async for piece in sse.events(source)])

    return asyncio.run(collect())


def parse(body: bytes) -> list[Any]:
    events = []
    for block in body.decode().split("\n\n"):
        if block.startswith("data: "):
            data = block[len("data: ") :]
            events.append(data if data == "[DONE]" else json.loads(data))
    return events


def texts(events: list[Any], kind: str) -> dict[int, str]:
    out: dict[int, str] = {}
    for event in events:
        for choice in event.get("choices", []) if isinstance(event, dict) else []:
            piece = choice["delta"].get("content", "") if kind == "chat" else choice["text"]
            out[choice["index"]] = out.get(choice["index"], "") + (piece or "")
    return out


@pytest.mark.parametrize(("kind", "byte_chunk"), [("chat", 7), ("chat", 1000), ("completions", 13)])
def test_each_choice_is_redacted_as_a_whole(analyzer: PiiAnalyzer, kind: str, byte_chunk: int) -> None:
    redactor = Redactor(analyzer, PiiGuard())
    sse = SseRedaction(redactor)
    body = run(sse, upstream(sse_stream(kind, ANSWERS), byte_chunk))
    events = parse(body)
    whole = Redactor(analyzer, PiiGuard())
    assert texts(events, kind) == {i: whole.redact(answer).text for i, answer in enumerate(ANSWERS)}
    assert not any(secret.encode() in body for secret in SECRETS)
    assert events[-1] == "[DONE]" and events[-2]["usage"] == {"total_tokens": 9}
    finals = [c for e in events[:-1] for c in e["choices"] if c["finish_reason"] == "stop"]
    assert sorted(c["index"] for c in finals) == [0, 1]  # the finishing chunks carry the held-back rest
    assert all(c["logprobs"] is None for e in events[:-1] for c in e["choices"])  # tokens spelled out
    assert not sse.failed
    assert redactor.counts == {"EMAIL_ADDRESS": 1, "PHONE_NUMBER": 1, "CREDIT_CARD": 1, "IBAN_CODE": 1}


def test_a_stream_that_just_ends_still_releases_what_was_held(analyzer: PiiAnalyzer) -> None:
    sse = SseRedaction(Redactor(analyzer, PiiGuard()))
    body = run(sse, upstream(sse_stream("chat", ANSWERS, done=False, finish=False), 64))
    events = parse(body)
    whole = Redactor(analyzer, PiiGuard())
    assert texts(events, "chat") == {i: whole.redact(answer).text for i, answer in enumerate(ANSWERS)}
    assert "[DONE]" not in events  # the worker sent none; the gateway does not invent one


def test_comments_and_events_without_choices_pass_unchanged(analyzer: PiiAnalyzer) -> None:
    source = b': keep-alive\n\ndata: {"error": {"message": "busy"}}\n\ndata: [DONE]\n\n'
    assert run(SseRedaction(Redactor(analyzer, PiiGuard())), upstream(source, 5)) == source


def guard_error(events: list[Any]) -> None:
    assert events[-1] == "[DONE]"
    assert events[-2]["error"]["code"] == "guard_unavailable"
    assert events[-2]["error"]["type"] == "server_error"


def stalling_stream() -> bytes:
    """An e-mail address cut in half, then a delta so long that analysing it takes far longer
    than the timeout (60,000 characters of number-like groups), then the rest of the address."""
    flood = "12 34 56 78 " * 5_000
    events = [
        chunk("chat", 0, "Write to maria.lo"),
        chunk("chat", 0, flood),
        chunk("chat", 0, "pez@example.org", "stop"),
    ]
    return b"".join(f"data: {json.dumps(event)}\n\n".encode() for event in events) + b"data: [DONE]\n\n"


def test_analyzer_timeout_mid_stream_ends_with_an_error_and_releases_nothing_held() -> None:
    slow = PiiAnalyzer(PiiSettings(timeout_s=0.25))
    sse = SseRedaction(Redactor(slow, PiiGuard()))
    body = run(sse, upstream(stalling_stream(), 4096))
    events = parse(body)
    guard_error(events)
    assert b"maria" not in body and b"12 34" not in body  # the held word and the unchecked delta
    assert texts(events, "chat") == {0: "Write to "}
    assert sse.failed
    slow.close()


def test_unparseable_event_fails_closed(analyzer: PiiAnalyzer) -> None:
    source = sse_stream("chat", ANSWERS[:1]).replace(b"data: {", b"data: {broken", 3)
    sse = SseRedaction(Redactor(analyzer, PiiGuard()))
    body = run(sse, upstream(source, 50))
    guard_error(parse(body))
    assert not any(secret.encode() in body for secret in SECRETS) and sse.failed


def test_fail_open_passes_the_rest_through_unredacted() -> None:
    slow = PiiAnalyzer(PiiSettings(timeout_s=0.25))
    sse = SseRedaction(Redactor(slow, PiiGuard()), fail_open=True)
    body = run(sse, upstream(stalling_stream(), 4096))
    events = parse(body)
    assert sse.failed and events[-1] == "[DONE]"
    assert texts(events, "chat")[0] == "Write to maria.lo" + "12 34 56 78 " * 5_000 + "pez@example.org"
    slow.close()


def test_whole_bodies_are_redacted_per_choice(analyzer: PiiAnalyzer) -> None:
    redactor = Redactor(analyzer, PiiGuard())
    chat = {
        "object": "chat.completion",
        "choices": [
            {"index": i, "message": {"role": "assistant", "content": a}, "logprobs": {"content": []}}
            for i, a in enumerate(ANSWERS)
        ],
        "usage": {"total_tokens": 3},
    }
    out = json.loads(redact_completion_body(json.dumps(chat).encode(), redactor))
    assert [c["message"]["content"] for c in out["choices"]] == [redactor.redact(a).text for a in ANSWERS]
    assert all(c["logprobs"] is None for c in out["choices"]) and out["usage"] == {"total_tokens": 3}
    completion = {"object": "text_completion", "choices": [{"index": 0, "text": ANSWERS[1]}]}
    redacted = asyncio.run(redact_completion_body_async(json.dumps(completion).encode(), redactor))
    assert json.loads(redacted)["choices"][0]["text"] == redactor.redact(ANSWERS[1]).text
    error = b'{"error": {"message": "boom", "type": "server_error"}}'
    assert redact_completion_body(error, redactor) == error
