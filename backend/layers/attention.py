"""Paged attention in plain torch: KV written by slot, decode over gathered blocks, causal prefill.

The KV cache of a layer is ``[2, num_blocks, block_size, kv_heads, head_dim]``. A step's tokens
are laid out flat with all decode tokens (one per sequence) first, then the prefill chunks. Per
step metadata (slot mapping, block tables, masks, reusable gather buffers) travels in one
``AttentionMetadata`` built once by the model runner and shared by every layer.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F


@dataclass(slots=True)
class PrefillSpan:
    start: int  # first flat token index of this chunk
    end: int  # one past the last
    context_len: int  # tokens in the cache for this sequence once the chunk is written
    block_ids: torch.Tensor | None  # blocks covering the context; None when the chunk is the whole context

    @property
    def num_tokens(self) -> int:
        return self.end - self.start


@dataclass(slots=True)
class AttentionMetadata:
    slot_mapping: torch.Tensor  # [tokens] flat slot index of each token's KV
    num_decode: int = 0
    decode_block_tables: torch.Tensor | None = None  # [decodes, max_blocks]
    decode_mask: torch.Tensor | None = None  # [decodes, 1, 1, max_blocks * block_size], True = attend
    prefills: list[PrefillSpan] = field(default_factory=list)
    # Gather buffers reused by every layer of the step: [decodes * max_blocks, block_size, kv_heads, dim].
    gather_k: torch.Tensor | None = None
    gather_v: torch.Tensor | None = None
    prefill_masks: dict[int, torch.Tensor] = field(default_factory=dict)


def write_kv(kv_cache: torch.Tensor, k: torch.Tensor, v: torch.Tensor, slot_mapping: torch.Tensor) -> None:
    """Store this step's keys and values at their slots. ``k``/``v``: [tokens, kv_heads, dim]."""
    _, num_blocks, block_size, kv_heads, dim = kv_cache.shape
    kv_cache[0].view(num_blocks * block_size, kv_heads, dim).index_copy_(0, slot_mapping, k)
    kv_cache[1].view(num_blocks * block_size, kv_heads, dim).index_copy_(0, slot_mapping, v)


def paged_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    kv_cache: torch.Tensor,
    meta: AttentionMetadata,
    scale: float,
) -> torch.Tensor:
    """``q``: [tokens, heads, dim]; ``k``/``v``: [tokens, kv_heads, dim]. Returns [tokens, heads, dim]."""
    write_kv(kv_cache, k, v, meta.slot_mapping)
    if meta.num_decode and not meta.prefills:
        return _decode(q, kv_cache, meta, scale)
    out = torch.empty_like(q)
    if meta.num_decode:
        out[: meta.num_decode] = _decode(q[: meta.num_decode], kv_cache, meta, scale)
    for span in meta.prefills:
        out[span.start : span.end] = _prefill(q, k, v, kv_cache, span, meta, scale)
    return out


def _decode(q: torch.Tensor, kv_cache: torch.Tensor, meta: AttentionMetadata, scale: float) -> torch.Tensor:
    if meta.decode_block_tables is None or meta.gather_k is None or meta.gather_v is None:
        raise ValueError("decode tokens without block tables or gather buffers")
    n = meta.num_decode
    _, _, block_size, kv_heads, dim = kv_cache.shape
    flat_tables = meta.decode_block_tables.reshape(-1)
    keys = torch.index_select(kv_cache[0], 0, flat_tables, out=meta.gather_k)
    values = torch.index_select(kv_cache[1], 0, flat_tables, out=meta.gather_v)
    keys = keys.view(n, -1, kv_heads, dim).transpose(1, 2)
    values = values.view(n, -1, kv_heads, dim).transpose(1, 2)
    out = F.scaled_dot_product_attention(
        q[:n].unsqueeze(2), keys, values, attn_mask=meta.decode_mask, scale=scale, enable_gqa=True
    )
    return out.squeeze(2)


def _prefill(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    kv_cache: torch.Tensor,
    span: PrefillSpan,
    meta: AttentionMetadata,
    scale: float,
) -> torch.Tensor:
    q_span = q[span.start : span.end].transpose(0, 1).unsqueeze(0)  # [1, heads, n, dim]
    if span.block_ids is None:
        # The chunk is the whole context: plain causal attention over its own keys.
        k_span = k[span.start : span.end].transpose(0, 1).unsqueeze(0)
        v_span = v[span.start : span.end].transpose(0, 1).unsqueeze(0)
        out = F.scaled_dot_product_attention(q_span, k_span, v_span, is_causal=True, scale=scale, enable_gqa=True)
    else:
        _, _, block_size, kv_heads, dim = kv_cache.shape
        keys = kv_cache[0].index_select(0, span.block_ids).view(-1, kv_heads, dim)[: span.context_len]
        values = kv_cache[1].index_select(0, span.block_ids).view(-1, kv_heads, dim)[: span.context_len]
        mask = meta.prefill_masks[span.start]
        out = F.scaled_dot_product_attention(
            q_span,
            keys.transpose(0, 1).unsqueeze(0),
            values.transpose(0, 1).unsqueeze(0),
            attn_mask=mask,
            scale=scale,
            enable_gqa=True,
        )
    return out.squeeze(0).transpose(0, 1)


def causal_mask_with_context(num_tokens: int, context_len: int, device: torch.device) -> torch.Tensor:
    """[1, 1, n, ctx] bool: query i (at position ctx - n + i) sees keys 0..ctx - n + i."""
    offset = context_len - num_tokens
    rows = torch.arange(num_tokens, device=device).unsqueeze(1) + offset
    cols = torch.arange(context_len, device=device).unsqueeze(0)
    return (cols <= rows).view(1, 1, num_tokens, context_len)
