"""KV cache block accounting: reference counts, prefix caching, LRU eviction, copy-on-write.

Pure Python, no tensors: the model runner executes the copies this class asks for.

Prefix caching: a full block's hash chains the previous block's hash, the tenant's cache salt
(first block only; it then flows down the chain) and the block's token ids. Blocks are cached only
once their KV has been computed. A hit is verified by comparing token ids, so a hash collision can
never serve another prompt's KV. Freed blocks keep their hash and stay findable until evicted,
least recently freed first.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Sequence as Seq
from dataclasses import dataclass, field

from backend.engine.sequence import Sequence


class NoFreeBlocksError(RuntimeError):
    """Raised only on internal misuse: callers check ``can_*`` first."""


@dataclass(slots=True)
class Block:
    block_id: int
    ref_count: int = 0
    block_hash: bytes | None = None
    token_ids: tuple[int, ...] = ()


@dataclass(slots=True)
class PrefixCacheStats:
    queried_tokens: int = 0
    hit_tokens: int = 0


@dataclass(slots=True)
class CopyOp:
    """Copy the KV of block ``src`` to block ``dst`` before this step's forward (copy-on-write)."""

    src: int
    dst: int


def chain_hash(parent: bytes | None, salt: str | None, token_ids: Seq[int]) -> bytes:
    digest = hashlib.sha256()
    if parent is None:
        digest.update(b"root:")
        digest.update((salt or "").encode("utf-8"))
    else:
        digest.update(parent)
    digest.update(b"|")
    digest.update(b",".join(str(t).encode() for t in token_ids))
    return digest.digest()


@dataclass(slots=True)
class _SeqHashes:
    """Hashes of a sequence's full blocks, extended incrementally as blocks fill."""

    hashes: list[bytes] = field(default_factory=list)


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int, *, enable_prefix_caching: bool = True) -> None:
        if num_blocks < 1 or block_size < 1:
            raise ValueError("num_blocks and block_size must be positive")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self.blocks = [Block(i) for i in range(num_blocks)]
        # Free blocks in eviction order: the first is evicted (reused) first.
        self._free: OrderedDict[int, None] = OrderedDict.fromkeys(range(num_blocks))
        self._cached: dict[bytes, int] = {}
        self._seq_hashes: dict[int, _SeqHashes] = {}
        self.stats = PrefixCacheStats()

    # -- queries -------------------------------------------------------------------------------

    @property
    def num_free_blocks(self) -> int:
        return len(self._free)

    @property
    def num_used_blocks(self) -> int:
        return self.num_blocks - len(self._free)

    def blocks_needed(self, seq: Sequence, num_new_tokens: int) -> int:
        """New blocks ``ensure_slots`` would take, including a copy-on-write of a shared last block."""
        total = seq.num_computed_tokens + num_new_tokens
        needed = max(0, -(-total // self.block_size) - len(seq.block_table))
        if self._needs_cow(seq, num_new_tokens):
            needed += 1
        return needed

    def can_ensure_slots(self, seq: Sequence, num_new_tokens: int) -> bool:
        return self.blocks_needed(seq, num_new_tokens) <= len(self._free)

    # -- admission with prefix caching ---------------------------------------------------------

    def admit(self, seq: Sequence, num_new_tokens_hint: int) -> bool:
        """Attach cached prefix blocks to a waiting sequence, if enough blocks remain for its first chunk.

        At least one token is always left to compute, so the step produces logits. Returns False (and
        changes nothing) when the free blocks cannot cover the first chunk after the hits.
        """
        if seq.block_table:
            raise NoFreeBlocksError("admit() on a sequence that already holds blocks")
        hits = self._lookup_prefix(seq) if self.enable_prefix_caching else []
        cached_tokens = len(hits) * self.block_size
        remaining = seq.num_tokens - cached_tokens
        chunk = min(num_new_tokens_hint, remaining)
        total = cached_tokens + chunk
        new_blocks = -(-total // self.block_size) - len(hits)
        revived = sum(1 for b in hits if self.blocks[b].ref_count == 0)
        if new_blocks + revived > len(self._free):
            return False
        for block_id in hits:
            self._take(block_id)
        seq.block_table = list(hits)
        seq.num_computed_tokens = cached_tokens
        self.stats.queried_tokens += seq.num_tokens
        self.stats.hit_tokens += cached_tokens
        if seq.num_output_tokens == 0 and seq.num_cached_tokens == 0:
            seq.num_cached_tokens = cached_tokens
        return True

    def _lookup_prefix(self, seq: Sequence) -> list[int]:
        hashes = self._hashes_for(seq)
        # Never serve the last token from cache: its logits are needed.
        max_blocks = (seq.num_tokens - 1) // self.block_size
        hits: list[int] = []
        for i in range(min(max_blocks, len(hashes))):
            block_id = self._cached.get(hashes[i])
            if block_id is None:
                break
            start = i * self.block_size
            expected = tuple(seq.token_ids[start : start + self.block_size])
            if self.blocks[block_id].token_ids != expected:
                break  # a hash collision; never serve another prompt's KV
            hits.append(block_id)
        return hits

    def _hashes_for(self, seq: Sequence) -> list[bytes]:
        state = self._seq_hashes.setdefault(seq.seq_id, _SeqHashes())
        full = seq.num_tokens // self.block_size
        while len(state.hashes) < full:
            i = len(state.hashes)
            parent = state.hashes[-1] if state.hashes else None
            tokens = seq.token_ids[i * self.block_size : (i + 1) * self.block_size]
            state.hashes.append(chain_hash(parent, seq.cache_salt, tokens))
        return state.hashes

    # -- growth --------------------------------------------------------------------------------

    def ensure_slots(self, seq: Sequence, num_new_tokens: int) -> list[CopyOp]:
        """Make room for the next ``num_new_tokens`` KV entries of ``seq``; returns COW copies to do."""
        if not self.can_ensure_slots(seq, num_new_tokens):
            raise NoFreeBlocksError("ensure_slots() without enough free blocks")
        copies: list[CopyOp] = []
        if self._needs_cow(seq, num_new_tokens):
            old = seq.block_table[-1]
            new = self._allocate_fresh()
            copies.append(CopyOp(old, new))
            self._release(old)
            seq.block_table[-1] = new
        total = seq.num_computed_tokens + num_new_tokens
        while len(seq.block_table) * self.block_size < total:
            seq.block_table.append(self._allocate_fresh())
        return copies

    def _needs_cow(self, seq: Sequence, num_new_tokens: int) -> bool:
        if num_new_tokens == 0 or not seq.block_table or seq.num_computed_tokens % self.block_size == 0:
            return False
        # The next write lands in the partially filled last block; it must be ours alone.
        last = seq.block_table[(seq.num_computed_tokens - 1) // self.block_size]
        return self.blocks[last].ref_count > 1

    def fork(self, parent: Sequence, child: Sequence) -> None:
        """Share every block of ``parent`` with ``child`` (copy-on-write on the first divergent write)."""
        for block_id in parent.block_table:
            self.blocks[block_id].ref_count += 1
        child.block_table = list(parent.block_table)

    # -- after a step --------------------------------------------------------------------------

    def commit(self, seq: Sequence) -> None:
        """Register the sequence's fully computed blocks in the prefix cache."""
        if not self.enable_prefix_caching:
            return
        full = seq.num_computed_tokens // self.block_size
        if full == 0:
            return
        hashes = self._hashes_for(seq)
        for i in range(min(full, len(hashes))):
            block = self.blocks[seq.block_table[i]]
            if block.block_hash is not None:
                continue
            if hashes[i] in self._cached:
                continue  # identical content computed concurrently elsewhere; keep that copy
            start = i * self.block_size
            block.block_hash = hashes[i]
            block.token_ids = tuple(seq.token_ids[start : start + self.block_size])
            self._cached[hashes[i]] = block.block_id

    def free(self, seq: Sequence) -> None:
        """Release all blocks of ``seq`` (finish, abort or preemption). Tail blocks are evicted first."""
        for block_id in reversed(seq.block_table):
            self._release(block_id)
        seq.block_table = []
        seq.num_computed_tokens = 0
        self._seq_hashes.pop(seq.seq_id, None)

    # -- internals -----------------------------------------------------------------------------

    def _take(self, block_id: int) -> None:
        block = self.blocks[block_id]
        if block.ref_count == 0:
            del self._free[block_id]
        block.ref_count += 1

    def _allocate_fresh(self) -> int:
        if not self._free:
            raise NoFreeBlocksError("no free KV blocks")
        block_id, _ = self._free.popitem(last=False)
        block = self.blocks[block_id]
        if block.block_hash is not None:  # evict the cached content it held
            if self._cached.get(block.block_hash) == block_id:
                del self._cached[block.block_hash]
            block.block_hash = None
            block.token_ids = ()
        block.ref_count = 1
        return block_id

    def _release(self, block_id: int) -> None:
        block = self.blocks[block_id]
        if block.ref_count <= 0:
            raise NoFreeBlocksError(f"block {block_id} released more often than taken")
        block.ref_count -= 1
        if block.ref_count == 0:
            if block.block_hash is None:
                # Uncached blocks carry nothing worth keeping: reuse them first.
                self._free[block_id] = None
                self._free.move_to_end(block_id, last=False)
            else:
                self._free[block_id] = None
