"""Per-request sampling and stopping options, validated once when a request enters the engine."""

from __future__ import annotations

from dataclasses import dataclass


class SamplingParamsError(ValueError):
    """An invalid sampling option; the message names the field and the accepted range."""


@dataclass(frozen=True, slots=True)
class SamplingParams:
    max_tokens: int = 16
    temperature: float = 1.0  # 0 = greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 = off
    min_p: float = 0.0
    repetition_penalty: float = 1.0  # HF semantics: over prompt and output tokens
    presence_penalty: float = 0.0  # OpenAI semantics: over output tokens
    frequency_penalty: float = 0.0
    seed: int | None = None
    n: int = 1
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False
    # None = no logprobs; k >= 0 = the chosen token's logprob plus the k most likely alternatives.
    logprobs: int | None = None
    skip_special_tokens: bool = True

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    def __post_init__(self) -> None:
        checks: list[tuple[bool, str]] = [
            (self.max_tokens >= 1, "max_tokens must be >= 1"),
            (0.0 <= self.temperature <= 2.0, "temperature must be in [0, 2]"),
            (0.0 < self.top_p <= 1.0, "top_p must be in (0, 1]"),
            (self.top_k >= 0, "top_k must be >= 0 (0 disables it)"),
            (0.0 <= self.min_p <= 1.0, "min_p must be in [0, 1]"),
            (0.0 < self.repetition_penalty <= 2.0, "repetition_penalty must be in (0, 2]"),
            (-2.0 <= self.presence_penalty <= 2.0, "presence_penalty must be in [-2, 2]"),
            (-2.0 <= self.frequency_penalty <= 2.0, "frequency_penalty must be in [-2, 2]"),
            (1 <= self.n <= 16, "n must be in [1, 16]"),
            (len(self.stop) <= 8, "stop accepts at most 8 strings"),
            (all(0 < len(s) <= 256 for s in self.stop), "each stop string must have 1 to 256 characters"),
            (self.logprobs is None or 0 <= self.logprobs <= 20, "logprobs must be in [0, 20]"),
        ]
        for ok, message in checks:
            if not ok:
                raise SamplingParamsError(message)
