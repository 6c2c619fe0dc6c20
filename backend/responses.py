"""OpenAI response payloads (whole and streamed) built from the engine's per-step deltas."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from backend.engine.output import RequestOutput
from backend.layers.sampler import TokenLogprobs

Kind = Literal["chat", "completion"]
TokenText = Callable[[int], str]


def new_id(kind: Kind) -> str:
    return f"{'chatcmpl' if kind == 'chat' else 'cmpl'}-{uuid.uuid4().hex}"


def sse(payload: dict[str, Any] | str) -> bytes:
    data = payload if isinstance(payload, str) else json.dumps(payload, separators=(",", ":"))
    return f"data: {data}\n\n".encode()


@dataclass(slots=True)
class Choice:
    text: str = ""
    finish_reason: str | None = None
    logprobs: list[TokenLogprobs] = field(default_factory=list)
    num_output_tokens: int = 0


@dataclass(slots=True)
class Usage:
    prompt_tokens: int = 0
    cached_tokens: int = 0
    completion_tokens: int = 0

    def payload(self) -> dict[str, Any]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": self.cached_tokens},
        }


class ResponseBuilder:
    """Accumulates deltas per choice; renders chunks while streaming and the whole response at the end."""

    def __init__(self, kind: Kind, model: str, n: int, token_text: TokenText) -> None:
        self.kind = kind
        self.model = model
        self.id = new_id(kind)
        self.created = int(time.time())
        self.choices = [Choice() for _ in range(n)]
        self.usage = Usage()
        self.token_text = token_text
        self._started: set[int] = set()

    def add(self, out: RequestOutput) -> None:
        choice = self.choices[out.index]
        choice.text += out.text_delta
        choice.logprobs.extend(out.logprobs)
        choice.num_output_tokens = out.num_output_tokens
        if out.finished:
            choice.finish_reason = out.finish_reason
        self.usage.prompt_tokens = out.num_prompt_tokens
        self.usage.cached_tokens = out.num_cached_tokens
        self.usage.completion_tokens = sum(c.num_output_tokens for c in self.choices)

    # -- whole responses -----------------------------------------------------------------------

    def response(self, with_logprobs: bool) -> dict[str, Any]:
        choices = [self._choice(i, c, with_logprobs) for i, c in enumerate(self.choices)]
        obj = "chat.completion" if self.kind == "chat" else "text_completion"
        return {**self._envelope(choices, obj), "usage": self.usage.payload()}

    def _choice(self, index: int, choice: Choice, with_logprobs: bool) -> dict[str, Any]:
        logprobs = self._logprobs(choice.logprobs) if with_logprobs else None
        body: dict[str, Any] = {"index": index, "logprobs": logprobs, "finish_reason": choice.finish_reason}
        if self.kind == "chat":
            body["message"] = {"role": "assistant", "content": choice.text}
        else:
            body["text"] = choice.text
        return body

    # -- streaming -----------------------------------------------------------------------------

    def chunk(self, out: RequestOutput, with_logprobs: bool) -> dict[str, Any]:
        logprobs = self._logprobs(out.logprobs) if with_logprobs else None
        body: dict[str, Any] = {
            "index": out.index,
            "logprobs": logprobs,
            "finish_reason": out.finish_reason if out.finished else None,
        }
        if self.kind == "chat":
            delta: dict[str, Any] = {"content": out.text_delta}
            if out.index not in self._started:
                self._started.add(out.index)
                delta = {"role": "assistant", **delta}
            body["delta"] = delta
        else:
            body["text"] = out.text_delta
        return self._envelope([body], self._chunk_object())

    def usage_chunk(self) -> dict[str, Any]:
        return {**self._envelope([], self._chunk_object()), "usage": self.usage.payload()}

    def _chunk_object(self) -> str:
        return "chat.completion.chunk" if self.kind == "chat" else "text_completion"

    def _envelope(self, choices: list[dict[str, Any]], obj: str) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": obj,
            "created": self.created,
            "model": self.model,
            "choices": choices,
        }

    # -- logprobs in each API's shape ----------------------------------------------------------

    def _logprobs(self, entries: list[TokenLogprobs]) -> dict[str, Any]:
        if self.kind == "chat":
            return {"content": [self._chat_entry(e) for e in entries]}
        tokens = [self.token_text(e.token_id) for e in entries]
        return {
            "tokens": tokens,
            "token_logprobs": [e.logprob for e in entries],
            "top_logprobs": [{self.token_text(t): lp for t, lp in e.top_logprobs} for e in entries],
        }

    def _chat_entry(self, entry: TokenLogprobs) -> dict[str, Any]:
        def item(token_id: int, logprob: float) -> dict[str, Any]:
            text = self.token_text(token_id)
            return {"token": text, "logprob": logprob, "bytes": list(text.encode("utf-8"))}

        return {
            **item(entry.token_id, entry.logprob),
            "top_logprobs": [item(t, lp) for t, lp in entry.top_logprobs],
        }
