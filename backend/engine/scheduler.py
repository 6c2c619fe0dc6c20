"""Iteration-level continuous batching under a per-step token budget.

Each step: running sequences first (oldest first), each getting its remaining tokens up to the
budget (1 for decoding, a chunk for a prefill in progress); then waiting sequences in arrival
order while budget, sequence slots and KV blocks last. When a running sequence needs a block and
none is free, the most recently arrived running sequence is preempted by recompute: its blocks
are freed and it goes back to the front of the waiting queue (prefix caching often revives them).
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field

from backend.engine.block_manager import BlockManager, CopyOp
from backend.engine.sequence import Sequence, SequenceStatus


@dataclass(frozen=True, slots=True)
class SchedulerConfig:
    max_num_seqs: int = 64
    max_num_batched_tokens: int = 1024
    # Prefill chunk ceiling per sequence per step; defaults to the whole step budget.
    max_prefill_chunk: int | None = None

    def __post_init__(self) -> None:
        if self.max_num_seqs < 1 or self.max_num_batched_tokens < 1:
            raise ValueError("max_num_seqs and max_num_batched_tokens must be positive")


@dataclass(slots=True)
class ScheduledSeq:
    seq: Sequence
    num_new_tokens: int

    @property
    def completes(self) -> bool:
        """After this step the sequence has computed all its tokens and will sample the next one."""
        return self.seq.num_computed_tokens + self.num_new_tokens == self.seq.num_tokens


@dataclass(slots=True)
class SchedulerOutput:
    scheduled: list[ScheduledSeq] = field(default_factory=list)
    copies: list[CopyOp] = field(default_factory=list)
    preempted: list[Sequence] = field(default_factory=list)

    @property
    def num_tokens(self) -> int:
        return sum(s.num_new_tokens for s in self.scheduled)


class Scheduler:
    def __init__(self, config: SchedulerConfig, block_manager: BlockManager) -> None:
        self.config = config
        self.blocks = block_manager
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.num_preemptions = 0

    def add(self, seq: Sequence) -> None:
        seq.status = SequenceStatus.WAITING
        self.waiting.append(seq)

    def add_running(self, seq: Sequence) -> None:
        """A forked sibling joins its parent among the running sequences."""
        seq.status = SequenceStatus.RUNNING
        self.running.append(seq)

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def schedule(self) -> SchedulerOutput:
        out = SchedulerOutput()
        budget = self.config.max_num_batched_tokens
        chunk_cap = self.config.max_prefill_chunk or budget
        scheduled_ids: set[int] = set()

        # 1. Running sequences, oldest first (re-admitted preempted sequences keep their place).
        self.running.sort(key=lambda s: (s.arrival_time, s.seq_id))
        queue = list(self.running)
        while queue and budget > 0:
            seq = queue.pop(0)
            if seq.status is not SequenceStatus.RUNNING:
                continue  # preempted earlier in this loop
            num_new = min(seq.num_uncomputed_tokens, budget, chunk_cap)
            if num_new <= 0:
                continue
            preempted_self = False
            while not self.blocks.can_ensure_slots(seq, num_new):
                victim = self._pick_victim(exclude=scheduled_ids)
                self._preempt(victim, out)
                if victim is seq:
                    preempted_self = True
                    break
            if preempted_self:
                continue
            out.copies.extend(self.blocks.ensure_slots(seq, num_new))
            out.scheduled.append(ScheduledSeq(seq, num_new))
            scheduled_ids.add(seq.seq_id)
            budget -= num_new

        # 2. Waiting sequences in arrival order, unless something was just preempted (no thrashing).
        while self.waiting and budget > 0 and not out.preempted:
            if len(self.running) >= self.config.max_num_seqs:
                break
            seq = self.waiting[0]
            hint = min(budget, chunk_cap)
            if not self.blocks.admit(seq, hint):
                break
            num_new = min(seq.num_uncomputed_tokens, hint)
            out.copies.extend(self.blocks.ensure_slots(seq, num_new))
            self.waiting.popleft()
            if not seq.first_scheduled_ns:
                seq.first_scheduled_ns = time.time_ns()
            seq.status = SequenceStatus.RUNNING
            self.running.append(seq)
            out.scheduled.append(ScheduledSeq(seq, num_new))
            scheduled_ids.add(seq.seq_id)
            budget -= num_new
        return out

    def _pick_victim(self, exclude: set[int]) -> Sequence:
        """The most recently arrived running sequence not already scheduled this step.

        Never empty: the sequence asking for blocks is itself running and not yet scheduled.
        """
        candidates = [s for s in self.running if s.seq_id not in exclude]
        return max(candidates, key=lambda s: (s.arrival_time, s.seq_id))

    def _preempt(self, seq: Sequence, out: SchedulerOutput) -> None:
        self.blocks.free(seq)
        self.running.remove(seq)
        seq.status = SequenceStatus.WAITING
        self.waiting.appendleft(seq)
        out.preempted.append(seq)
        self.num_preemptions += 1

    def finish(self, seq: Sequence) -> None:
        """Remove a finished or aborted sequence and free its blocks."""
        if seq in self.running:
            self.running.remove(seq)
        elif seq in self.waiting:
            self.waiting.remove(seq)
        self.blocks.free(seq)
        seq.status = SequenceStatus.FINISHED
