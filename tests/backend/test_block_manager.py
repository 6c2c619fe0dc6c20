"""BlockManager: reference counts, prefix caching across salts, LRU eviction, copy-on-write."""

from __future__ import annotations

from backend.engine.block_manager import BlockManager, chain_hash
from backend.engine.sampling_params import SamplingParams
from backend.engine.sequence import Sequence

PARAMS = SamplingParams(max_tokens=4, temperature=0)


def seq(tokens: list[int], salt: str | None = None, arrival: float = 0.0) -> Sequence:
    return Sequence("r", tokens, PARAMS, arrival_time=arrival, cache_salt=salt)


def run_prefill(bm: BlockManager, s: Sequence) -> None:
    """Admit and compute the whole prompt, as one step would."""
    assert bm.admit(s, s.num_tokens)
    bm.ensure_slots(s, s.num_uncomputed_tokens)
    s.num_computed_tokens = s.num_tokens
    bm.commit(s)


def cached_tokens(bm: BlockManager, prefix: list[int]) -> int:
    """How many tokens of ``prefix`` a new prompt extending it finds in the cache (the probe is freed)."""
    probe = seq([*prefix, 1])
    assert bm.admit(probe, 1)
    found = probe.num_computed_tokens
    bm.free(probe)
    return found


def test_prefix_hit_reuses_full_blocks_and_leaves_the_last_token_to_compute() -> None:
    bm = BlockManager(16, 4)
    first = seq(list(range(10)))
    run_prefill(bm, first)
    bm.free(first)
    second = seq([*list(range(10)), 99])
    assert bm.admit(second, 100)
    assert second.num_computed_tokens == 8  # two full blocks of four
    assert second.num_cached_tokens == 8
    assert bm.stats.hit_tokens == 8


def test_identical_prompt_never_serves_its_last_token_from_cache() -> None:
    bm = BlockManager(16, 4)
    first = seq(list(range(8)))
    run_prefill(bm, first)
    again = seq(list(range(8)))
    assert bm.admit(again, 100)
    assert again.num_computed_tokens == 4  # the second block holds the last token: recomputed


def test_different_salts_never_share_blocks() -> None:
    bm = BlockManager(16, 4)
    tenant_a = seq(list(range(12)), salt="tenant-a")
    run_prefill(bm, tenant_a)
    tenant_b = seq([*list(range(12)), 5], salt="tenant-b")
    assert bm.admit(tenant_b, 100)
    assert tenant_b.num_computed_tokens == 0
    assert not set(tenant_a.block_table) & set(tenant_b.block_table)
    same_tenant = seq([*list(range(12)), 5], salt="tenant-a")
    assert bm.admit(same_tenant, 100)
    assert same_tenant.num_computed_tokens == 12


def test_hash_chain_depends_on_salt_and_parent() -> None:
    assert chain_hash(None, "a", [1, 2]) != chain_hash(None, "b", [1, 2])
    root = chain_hash(None, "a", [1, 2])
    assert chain_hash(root, "a", [3]) != chain_hash(chain_hash(None, "a", [9, 9]), "a", [3])


def test_hit_is_verified_by_token_equality() -> None:
    bm = BlockManager(16, 4)
    first = seq(list(range(8)))
    run_prefill(bm, first)
    block = bm.blocks[first.block_table[0]]
    block.token_ids = (42, 42, 42, 42)  # as if another prompt's KV sat under this hash
    assert cached_tokens(bm, list(range(8))) == 0


def test_lru_evicts_least_recently_freed_cached_blocks_first() -> None:
    bm = BlockManager(4, 4)
    old = seq(list(range(8)))
    run_prefill(bm, old)
    bm.free(old)
    recent = seq(list(range(100, 108)))
    run_prefill(bm, recent)  # takes the two never-used blocks
    bm.free(recent)
    # Two new blocks are needed: they must come from `old`, freed before `recent`.
    newcomer = seq(list(range(200, 208)))
    run_prefill(bm, newcomer)
    bm.free(newcomer)
    assert cached_tokens(bm, list(range(100, 108))) == 8
    assert cached_tokens(bm, list(range(8))) == 0


def test_fork_shares_blocks_and_copies_on_write() -> None:
    bm = BlockManager(8, 4)
    parent = seq(list(range(6)))
    run_prefill(bm, parent)
    child = parent.fork(1)
    bm.fork(parent, child)
    shared_last = parent.block_table[-1]
    assert bm.blocks[shared_last].ref_count == 2
    parent.token_ids.append(7)
    copies = bm.ensure_slots(parent, 1)
    assert len(copies) == 1 and copies[0].src == shared_last
    assert parent.block_table[-1] == copies[0].dst != shared_last
    assert bm.blocks[shared_last].ref_count == 1
    assert parent.block_table[0] == child.block_table[0]  # the full first block stays shared
    bm.free(parent)
    bm.free(child)
    assert bm.num_free_blocks == 8
    assert all(b.ref_count == 0 for b in bm.blocks)


def test_admit_fails_without_side_effects_when_blocks_are_short() -> None:
    bm = BlockManager(2, 4)
    big = seq(list(range(20)))
    assert not bm.admit(big, 20)
    assert big.block_table == [] and bm.num_free_blocks == 2
    assert bm.admit(big, 8)  # a first chunk that fits is fine
