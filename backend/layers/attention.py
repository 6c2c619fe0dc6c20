"""Paged attention in plain torch: KV written by slot, decode over gathered blocks, causal prefill.

The KV cache of a layer is ``[2, kv_heads, num_blocks, block_size, head_dim]``: head-major, so
that gathering a sequence's blocks for one head yields the contiguous ``[context, head_dim]``
matrix that a batched matmul reads directly (measured: the token-major layout needs a transpose
copy and pushes SDPA onto a path several times slower for one query per sequence).

A step's tokens are laid out flat: decode tokens first (one per sequence), then prefill chunks.
Decode attention either reads the cache in place through block tables (the fused CPU kernel of
``LayerOps``) or, in plain torch, gathers each group of sequences of similar context length into
a reused buffer and pads the group to its longest. Per-step metadata travels in one
``AttentionMetadata`` built once by the model runner and shared by every layer.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from backend.layers.ops import LayerOps, PagedDecode
from backend.layers.precision import native_matmul


@dataclass(slots=True)
class DecodeGroup:
    """Decode tokens ``start:end`` whose contexts are gathered together, padded to ``max_len``."""

    start: int
    end: int
    max_len: int
    gather_index: torch.Tensor  # [rows * kv_heads * blocks] rows of the flattened [kv_heads * blocks] cache
    mask: torch.Tensor  # [rows, 1, 1, max_len] float32: 0 to attend, -inf for padding
    buffer_offset: int  # first row of this group in the shared gather buffers


@dataclass(slots=True)
class PrefillSpan:
    start: int  # first flat token index of this chunk
    end: int  # one past the last
    context_len: int  # tokens in the cache for this sequence once the chunk is written
    gather_index: torch.Tensor | None  # cache rows of the context; None when the chunk is the whole context
    mask: torch.Tensor | None = None  # [1, 1, chunk, context] bool causal mask with the cached prefix


@dataclass(frozen=True, slots=True)
class LayerCache:
    """One layer's slice of the KV cache ``[2, kv_heads, num_blocks, block_size, head_dim]`` and the
    views attention reads and writes it through, made once instead of at every step."""

    kv: torch.Tensor
    k_cache: torch.Tensor  # [kv_heads, num_blocks, block_size, head_dim]: read through block tables
    v_cache: torch.Tensor
    k_slots: torch.Tensor  # [kv_heads, num_blocks * block_size, head_dim]
    v_slots: torch.Tensor
    k_rows: torch.Tensor  # [kv_heads * num_blocks, block_size, head_dim]: gathered by block
    v_rows: torch.Tensor
    # Decode attention's small matmuls in float32: low-precision bmm without native support is a slow
    # generic loop (4x slower than widening keys and values at 512 tokens of context, measured).
    widen: bool

    @classmethod
    def of(cls, kv: torch.Tensor) -> LayerCache:
        _, kv_heads, num_blocks, block_size, dim = kv.shape
        slots = kv.view(2, kv_heads, num_blocks * block_size, dim)
        rows = kv.view(2, kv_heads * num_blocks, block_size, dim)
        widen = not native_matmul(kv.dtype, kv.device.type)
        return cls(kv, kv[0], kv[1], slots[0], slots[1], rows[0], rows[1], widen)


@dataclass(slots=True)
class AttentionMetadata:
    slot_mapping: torch.Tensor  # [tokens] flat slot index of each token's KV
    num_decode: int = 0  # the first tokens of the step, one per decoding sequence
    paged: PagedDecode | None = None  # when the layer ops read the cache through block tables
    decode_groups: list[DecodeGroup] = field(default_factory=list)  # otherwise
    prefills: list[PrefillSpan] = field(default_factory=list)
    # Gather buffers reused by every layer of the step: [rows, block_size, head_dim].
    gather_k: torch.Tensor | None = None
    gather_v: torch.Tensor | None = None


def write_kv(cache: LayerCache, k: torch.Tensor, v: torch.Tensor, slot_mapping: torch.Tensor) -> None:
    """Store this step's keys and values at their slots. ``k``/``v``: [tokens, kv_heads, dim]."""
    cache.k_slots.index_copy_(1, slot_mapping, k.transpose(0, 1))
    cache.v_slots.index_copy_(1, slot_mapping, v.transpose(0, 1))


def paged_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cache: LayerCache,
    meta: AttentionMetadata,
    scale: float,
    ops: LayerOps,
) -> torch.Tensor:
    """``q``: [tokens, heads, dim]; ``k``/``v``: [tokens, kv_heads, dim]. Returns [tokens, heads, dim]."""
    write_kv(cache, k, v, meta.slot_mapping)
    if meta.paged is not None:
        decoded = ops.decode_attention(q[: meta.num_decode], cache.k_cache, cache.v_cache, meta.paged, scale)
        if not meta.prefills:
            return decoded
        out = torch.empty_like(q)
        out[: meta.num_decode] = decoded
    elif len(meta.decode_groups) == 1 and not meta.prefills:
        return _decode(q, cache, meta.decode_groups[0], meta, scale)
    else:
        out = torch.empty_like(q)
    for group in meta.decode_groups:
        out[group.start : group.end] = _decode(q[group.start : group.end], cache, group, meta, scale)
    for span in meta.prefills:
        out[span.start : span.end] = _prefill(q, k, v, cache, span, scale)
    return out


def _decode(
    q: torch.Tensor, cache: LayerCache, group: DecodeGroup, meta: AttentionMetadata, scale: float
) -> torch.Tensor:
    """One query per sequence: scores and weighted sums as two batched matmuls per (sequence, kv head)."""
    if meta.gather_k is None or meta.gather_v is None:
        raise ValueError("decode tokens without gather buffers")
    rows, heads, dim = q.shape
    kv_heads = cache.k_slots.shape[0]
    group_size = heads // kv_heads
    n = group.gather_index.numel()
    out_k = meta.gather_k[group.buffer_offset : group.buffer_offset + n]
    out_v = meta.gather_v[group.buffer_offset : group.buffer_offset + n]
    keys = torch.index_select(cache.k_rows, 0, group.gather_index, out=out_k)
    values = torch.index_select(cache.v_rows, 0, group.gather_index, out=out_v)
    keys = keys.view(rows * kv_heads, group.max_len, dim)
    values = values.view(rows * kv_heads, group.max_len, dim)
    # Query heads sharing a kv head become the rows of one small matmul against that head's keys.
    queries = (q * scale).reshape(rows * kv_heads, group_size, dim)
    if cache.widen:
        keys, values, queries = keys.float(), values.float(), queries.float()
    scores = torch.bmm(queries, keys.transpose(1, 2)).float().view(rows, kv_heads, group_size, group.max_len)
    probs = torch.softmax(scores + group.mask, dim=-1).to(values.dtype)
    out = torch.bmm(probs.view(rows * kv_heads, group_size, group.max_len), values)
    return out.view(rows, heads, dim).to(q.dtype)


def _prefill(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cache: LayerCache,
    span: PrefillSpan,
    scale: float,
) -> torch.Tensor:
    q_span = q[span.start : span.end].transpose(0, 1).unsqueeze(0)  # [1, heads, n, dim]
    if span.gather_index is None:
        # The chunk is the whole context: plain causal attention over its own keys.
        k_span = k[span.start : span.end].transpose(0, 1).unsqueeze(0)
        v_span = v[span.start : span.end].transpose(0, 1).unsqueeze(0)
        out = F.scaled_dot_product_attention(
            q_span, k_span, v_span, is_causal=True, scale=scale, enable_gqa=True
        )
    else:
        kv_heads, dim = cache.k_slots.shape[0], cache.k_slots.shape[2]
        keys = cache.k_rows.index_select(0, span.gather_index)
        values = cache.v_rows.index_select(0, span.gather_index)
        keys = keys.view(1, kv_heads, -1, dim)[:, :, : span.context_len]
        values = values.view(1, kv_heads, -1, dim)[:, :, : span.context_len]
        out = F.scaled_dot_product_attention(
            q_span, keys, values, attn_mask=span.mask, scale=scale, enable_gqa=True
        )
    return out.squeeze(0).transpose(0, 1)


def causal_mask_with_context(num_tokens: int, context_len: int, device: torch.device) -> torch.Tensor:
    """[1, 1, n, ctx] bool: query i (at position ctx - n + i) sees keys 0..ctx - n + i."""
    offset = context_len - num_tokens
    rows = torch.arange(num_tokens, device=device).unsqueeze(1) + offset
    cols = torch.arange(context_len, device=device).unsqueeze(0)
    return (cols <= rows).view(1, 1, num_tokens, context_len)


def gather_index(block_tables: torch.Tensor, kv_heads: int, num_blocks: int) -> torch.Tensor:
    """Rows of the flattened ``[kv_heads * num_blocks, block_size, dim]`` cache, by (seq, head, block)."""
    rows, blocks = block_tables.shape
    heads = torch.arange(kv_heads, device=block_tables.device).view(1, kv_heads, 1) * num_blocks
    return (heads + block_tables.view(rows, 1, blocks)).reshape(-1)
