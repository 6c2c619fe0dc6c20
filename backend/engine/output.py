"""Per-request output state: detokenization, stop conditions and the deltas ``step()`` returns."""

from __future__ import annotations

from collections.abc import Set
from dataclasses import dataclass, field

import torch

from backend.engine.detokenizer import IncrementalDetokenizer
from backend.engine.sampling_params import SamplingParams
from backend.engine.sequence import FinishReason, Sequence
from backend.engine.stop_checker import StopStringMatcher
from backend.layers.sampler import TokenLogprobs
from backend.loader.tokenizer import TokenizerBundle


@dataclass(frozen=True, slots=True)
class RequestOutput:
    """What one step produced for one choice of one request."""

    request_id: str
    index: int
    new_token_ids: list[int]
    text_delta: str
    finished: bool
    finish_reason: FinishReason | None
    num_prompt_tokens: int
    num_cached_tokens: int
    num_output_tokens: int
    logprobs: list[TokenLogprobs] = field(default_factory=list)
    # When the scheduler first admitted the sequence (time.time_ns); 0 if unknown.
    first_scheduled_ns: int = 0


@dataclass(slots=True)
class SeqOutputState:
    detokenizer: IncrementalDetokenizer
    stop_matcher: StopStringMatcher
    generator: torch.Generator | None

    @classmethod
    def create(
        cls, tokenizer: TokenizerBundle, seq: Sequence, generator: torch.Generator | None
    ) -> SeqOutputState:
        return cls(
            IncrementalDetokenizer(
                tokenizer.tokenizer, seq.prompt_token_ids, skip_special_tokens=seq.params.skip_special_tokens
            ),
            StopStringMatcher(seq.params.stop),
            generator,
        )

    def advance(
        self, seq: Sequence, token: int, eos_token_ids: Set[int], max_model_len: int
    ) -> tuple[str, FinishReason | None]:
        """Account for ``token`` (already appended to ``seq``); returns the text to emit and any finish."""
        params = seq.params
        if (token in eos_token_ids and not params.ignore_eos) or token in params.stop_token_ids:
            return self._drain(), "stop"
        text, hit = self.stop_matcher.feed(self.detokenizer.add([token]))
        if hit:
            return text, "stop"
        if seq.num_output_tokens >= params.max_tokens or seq.num_tokens >= max_model_len:
            return text + self._drain(), "length"
        return text, None

    def _drain(self) -> str:
        """Release held-back text at the end, still cut at a stop string."""
        text, hit = self.stop_matcher.feed(self.detokenizer.flush())
        return text if hit else text + self.stop_matcher.flush()


@dataclass(slots=True)
class RequestState:
    request_id: str
    params: SamplingParams
    seqs: list[Sequence] = field(default_factory=list)
    _states: dict[int, SeqOutputState] = field(default_factory=dict)

    def add(self, seq: Sequence, state: SeqOutputState) -> None:
        self.seqs.append(seq)
        self._states[seq.seq_id] = state

    def state_of(self, seq: Sequence) -> SeqOutputState:
        return self._states[seq.seq_id]

    @property
    def finished(self) -> bool:
        # An n > 1 request forks its siblings after the prompt, so it is not done before then.
        return len(self.seqs) == self.params.n and all(s.is_finished for s in self.seqs)
