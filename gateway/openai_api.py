"""The OpenAI request shapes the gateway accepts: field types checked at the edge, before anything else.

Unknown fields are refused by name: a typo must not silently change nothing, and a client must
not smuggle worker-only fields. ``cache_salt`` in particular is set by the gateway from the
caller's tenant, never by the client. Fields for tools and structured output are passed through
to workers that support them. The worker builds its own stricter models from the shared parts here
(standard library and pydantic only).
"""

from __future__ import annotations

import functools
from typing import Annotated, Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

MAX_STOP_STRINGS = 8


@functools.cache
def _scalar_kinds(model: type[BaseModel], field_name: str) -> frozenset[type]:
    """Which of bool, int and float the field's type admits: worked out once per field, not per request."""
    annotation = model.model_fields[field_name].annotation
    return frozenset(kind for kind in (get_args(annotation) or (annotation,)) if kind in (bool, int, float))


def no_type_juggling(model: type[BaseModel], value: Any, field_name: str) -> Any:
    """Refuse what pydantic's lax mode would convert: JSON ``true`` is not the number 1, ``"16"`` is
    not 16 and 1 is not ``true``, as in the OpenAI API. Numbers stay numbers (1.0 is a valid
    integer, as JSON Schema has it), which pydantic's strict mode would refuse."""
    kinds = _scalar_kinds(model, field_name)
    if kinds == {bool} and value is not None and not isinstance(value, bool):
        raise ValueError("Input should be true or false")
    if kinds and bool not in kinds and isinstance(value, bool | str):
        raise ValueError("Input should be a number")
    return value


class RequestModel(BaseModel):
    """The base of every request shape, here and in the worker: unknown fields refused, no type juggling."""

    model_config = ConfigDict(extra="forbid")

    @field_validator("*", mode="before")
    @classmethod
    def _no_type_juggling(cls, value: Any, info: ValidationInfo) -> Any:
        return no_type_juggling(cls, value, info.field_name or "")


def check_stop_strings(value: str | list[str] | None) -> str | list[str] | None:
    """At most MAX_STOP_STRINGS stop strings of 1 to 256 characters (shared with the worker)."""
    strings = [value] if isinstance(value, str) else (value or [])
    if len(strings) > MAX_STOP_STRINGS:
        raise ValueError(f"at most {MAX_STOP_STRINGS} stop strings")
    if any(not s or len(s) > 256 for s in strings):
        raise ValueError("each stop string must have 1 to 256 characters")
    return value


def check_one_prompt(value: str | list[int] | list[str]) -> str | list[int] | list[str]:
    """One completions prompt per request: a string, token ids, or a list of exactly one string."""
    if isinstance(value, list):
        if not value:
            raise ValueError("the prompt is empty")
        if isinstance(value[0], str) and len(value) != 1:
            raise ValueError("one prompt per request (send several requests for a batch)")
    return value


class TextPart(RequestModel):
    type: Literal["text"]
    text: str


class ChatMessage(RequestModel):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = Field(default=None, max_length=256)
    tool_call_id: str | None = Field(default=None, max_length=256)
    tool_calls: list[dict[str, Any]] | None = None

    def text_length(self) -> int:
        if self.content is None:
            return 0
        if isinstance(self.content, str):
            return len(self.content)
        return sum(len(part.text) for part in self.content)


class StreamOptions(RequestModel):
    include_usage: bool = False


class _Sampling(RequestModel):
    model: str = Field(min_length=1, max_length=256)
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    n: int = Field(default=1, ge=1, le=16)
    stop: str | list[str] | None = None
    seed: int | None = None
    presence_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    logit_bias: dict[str, float] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = Field(default=None, max_length=256)
    # Worker extensions (our worker and vLLM accept them).
    top_k: int | None = Field(default=None, ge=0)
    min_p: float | None = Field(default=None, ge=0.0, le=1.0)
    repetition_penalty: float | None = Field(default=None, gt=0.0, le=2.0)
    ignore_eos: bool | None = None

    _stop_strings = field_validator("stop")(check_stop_strings)


class ChatCompletionRequest(_Sampling):
    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    max_completion_tokens: int | None = Field(default=None, ge=1)
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    response_format: dict[str, Any] | None = None

    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


class CompletionRequest(_Sampling):
    prompt: str | list[int] | list[str]
    logprobs: int | None = Field(default=None, ge=0, le=20)
    echo: bool | None = None

    _one_prompt = field_validator("prompt")(check_one_prompt)

    def requested_max_tokens(self) -> int | None:
        return self.max_tokens

    def prompt_length(self) -> int:
        if isinstance(self.prompt, str):
            return len(self.prompt)
        return sum(len(p) if isinstance(p, str) else 1 for p in self.prompt)


OpenAIRequest = ChatCompletionRequest | CompletionRequest
