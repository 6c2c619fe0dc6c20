"""Property tests: the scheduler and block manager under random workloads, aborts and tiny KV budgets."""

from __future__ import annotations

import random
from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from backend.engine.block_manager import BlockManager
from backend.engine.sampling_params import SamplingParams
from backend.engine.scheduler import Scheduler, SchedulerConfig
from backend.engine.sequence import Sequence, SequenceStatus

request_strategy = st.lists(
    st.tuples(
        st.integers(1, 40),  # prompt length
        st.integers(1, 12),  # max tokens
        st.sampled_from([None, "a", "b"]),  # cache salt
        st.integers(0, 3),  # shared-prefix family (so prefix hits happen)
        st.booleans(),  # aborted midway
    ),
    min_size=1,
    max_size=14,
)


def check_invariants(bm: BlockManager, sched: Scheduler, live: list[Sequence]) -> None:
    holders: Counter[int] = Counter()
    for s in live:
        holders.update(s.block_table)
        if s.status is SequenceStatus.RUNNING:
            assert len(s.block_table) * bm.block_size >= s.num_computed_tokens
    for block in bm.blocks:
        assert block.ref_count >= 0
        assert block.ref_count == holders[block.block_id]
    assert bm.num_free_blocks == sum(1 for b in bm.blocks if b.ref_count == 0)
    assert len(sched.running) <= sched.config.max_num_seqs
    # Shared blocks only between sequences of the same salt, and registered hashes match content.
    owners: dict[int, set[str | None]] = {}
    for s in live:
        for b in s.block_table:
            owners.setdefault(b, set()).add(s.cache_salt)
    assert all(len(salts) == 1 for salts in owners.values())


@settings(max_examples=60, deadline=None)
@given(
    requests=request_strategy,
    num_blocks=st.integers(4, 24),
    budget=st.integers(1, 48),
    seed=st.integers(0, 9),
)
def test_random_workloads_keep_every_invariant(
    requests: list[tuple[int, int, str | None, int, bool]], num_blocks: int, budget: int, seed: int
) -> None:
    rng = random.Random(seed)
    block_size = 4
    bm = BlockManager(num_blocks, block_size)
    sched = Scheduler(SchedulerConfig(max_num_seqs=4, max_num_batched_tokens=budget), bm)
    capacity = num_blocks * block_size
    live: list[Sequence] = []
    abort_at: dict[int, int] = {}
    for i, (length, max_tokens, salt, family, aborted) in enumerate(requests):
        if length + max_tokens > capacity:
            continue  # the engine rejects these up front
        prompt = [family * 1000 + t for t in range(length)]
        s = Sequence(
            f"r{i}",
            prompt,
            SamplingParams(max_tokens=max_tokens, temperature=0),
            arrival_time=float(i),
            cache_salt=salt,
        )
        sched.add(s)
        live.append(s)
        if aborted:
            abort_at[s.seq_id] = rng.randint(0, 6)
    steps = 0
    while sched.has_work():
        steps += 1
        assert steps < 2000, "no progress"
        out = sched.schedule()
        assert out.num_tokens <= budget
        assert out.scheduled or out.preempted, "a step with work must schedule or preempt"
        for item in out.scheduled:
            assert item.num_new_tokens >= 1
            assert (
                len(item.seq.block_table) * block_size >= item.seq.num_computed_tokens + item.num_new_tokens
            )
        for item in out.scheduled:
            seq = item.seq
            completes = item.completes
            seq.num_computed_tokens += item.num_new_tokens
            bm.commit(seq)
            if completes:
                seq.token_ids.append(rng.randint(0, 50))
                if seq.num_output_tokens >= seq.params.max_tokens:
                    sched.finish(seq)
        for s in live:
            if s.seq_id in abort_at and not s.is_finished:
                abort_at[s.seq_id] -= 1
                if abort_at[s.seq_id] < 0:
                    sched.finish(s)
        check_invariants(bm, sched, [s for s in live if not s.is_finished])
    assert bm.num_free_blocks == num_blocks
    assert all(b.ref_count == 0 for b in bm.blocks)
    for s in live:
        assert s.is_finished and s.block_table == []
