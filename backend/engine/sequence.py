"""A sequence: one choice of one request, with its tokens, KV blocks and progress."""

from __future__ import annotations

import itertools
from enum import Enum
from typing import Literal

from backend.engine.sampling_params import SamplingParams

FinishReason = Literal["stop", "length", "abort"]

_ids = itertools.count()


class SequenceStatus(Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


class Sequence:
    """Token ids are prompt then output; ``num_computed_tokens`` of them have KV in the cache."""

    __slots__ = (
        "arrival_time",
        "block_table",
        "cache_salt",
        "finish_reason",
        "first_scheduled_ns",
        "index",
        "num_cached_tokens",
        "num_computed_tokens",
        "num_prompt_tokens",
        "params",
        "request_id",
        "seq_id",
        "status",
        "token_ids",
    )

    def __init__(
        self,
        request_id: str,
        prompt_token_ids: list[int],
        params: SamplingParams,
        *,
        arrival_time: float,
        cache_salt: str | None = None,
        index: int = 0,
    ) -> None:
        self.seq_id = next(_ids)
        self.request_id = request_id
        self.index = index
        self.token_ids = list(prompt_token_ids)
        self.num_prompt_tokens = len(prompt_token_ids)
        self.params = params
        self.cache_salt = cache_salt
        self.arrival_time = arrival_time
        self.status = SequenceStatus.WAITING
        self.block_table: list[int] = []
        self.num_computed_tokens = 0
        # Prompt tokens served from the prefix cache at first admission (reported as cached_tokens).
        self.num_cached_tokens = 0
        self.finish_reason: FinishReason | None = None
        # Wall clock (time.time_ns) when the scheduler first admitted it; 0 until then. Preemption keeps it.
        self.first_scheduled_ns = 0

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.token_ids) - self.num_prompt_tokens

    @property
    def output_token_ids(self) -> list[int]:
        return self.token_ids[self.num_prompt_tokens :]

    @property
    def prompt_token_ids(self) -> list[int]:
        return self.token_ids[: self.num_prompt_tokens]

    @property
    def num_uncomputed_tokens(self) -> int:
        return len(self.token_ids) - self.num_computed_tokens

    @property
    def is_finished(self) -> bool:
        return self.status is SequenceStatus.FINISHED

    def fork(self, index: int) -> Sequence:
        """A sibling choice (``n > 1``) sharing everything so far; the block manager shares its blocks."""
        child = Sequence(
            self.request_id,
            self.prompt_token_ids,
            self.params,
            arrival_time=self.arrival_time,
            cache_salt=self.cache_salt,
            index=index,
        )
        child.token_ids = list(self.token_ids)
        child.num_computed_tokens = self.num_computed_tokens
        child.num_cached_tokens = self.num_cached_tokens
        child.first_scheduled_ns = self.first_scheduled_ns
        child.status = self.status
        return child

    def __repr__(self) -> str:
        return (
            f"Sequence(id={self.seq_id}, request={self.request_id!r}, index={self.index}, "
            f"tokens={self.num_tokens}, computed={self.num_computed_tokens}, status={self.status.value})"
        )
