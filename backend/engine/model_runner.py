"""Turns a scheduled step into flat batch tensors, runs the model and returns logits.

Owns the KV cache (one tensor for all layers) and the gather buffers that decode attention
reuses across layers and steps: allocating them afresh each step costs several times more than
the gather itself on CPU.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from backend.engine.block_manager import CopyOp
from backend.engine.decode_groups import split_into_groups
from backend.engine.scheduler import ScheduledSeq, SchedulerOutput
from backend.layers.attention import (
    AttentionMetadata,
    DecodeGroup,
    LayerCache,
    PrefillSpan,
    causal_mask_with_context,
    gather_index,
)
from backend.layers.ops import PagedDecode
from backend.models.llama import LlamaForCausalLM


@dataclass(slots=True)
class StepResult:
    logits: torch.Tensor  # [rows, vocab] float32, one row per sequence in ``sampled``
    sampled: list[ScheduledSeq]  # sequences that completed their tokens and sample this step


def kv_bytes_per_block(model: LlamaForCausalLM, block_size: int, dtype: torch.dtype) -> int:
    cfg = model.config
    elem = torch.empty((), dtype=dtype).element_size()
    return cfg.num_hidden_layers * 2 * block_size * cfg.num_key_value_heads * cfg.head_dim * elem


class ModelRunner:
    def __init__(self, model: LlamaForCausalLM, *, num_blocks: int, block_size: int) -> None:
        cfg = model.config
        self.model = model
        self.device = model.device
        self.block_size = block_size
        self.num_blocks = num_blocks
        self.kv_heads = cfg.num_key_value_heads
        self.kv_cache = torch.zeros(
            cfg.num_hidden_layers,
            2,
            cfg.num_key_value_heads,
            num_blocks,
            block_size,
            cfg.head_dim,
            dtype=model.dtype,
            device=self.device,
        )
        self.kv_caches = [LayerCache.of(layer) for layer in self.kv_cache.unbind(0)]
        self._row_shape = (block_size, cfg.head_dim)
        self._gather_k = torch.empty((0, *self._row_shape), dtype=model.dtype, device=self.device)
        self._gather_v = torch.empty_like(self._gather_k)

    @torch.inference_mode()
    def execute(self, out: SchedulerOutput) -> StepResult:
        self._copy_blocks(out.copies)
        # Decode tokens (one per sequence, shortest context first) lead; prefill chunks follow.
        decodes: list[ScheduledSeq] = []
        prefills: list[ScheduledSeq] = []
        for item in out.scheduled:
            (decodes if _is_decode(item) else prefills).append(item)
        decodes.sort(key=lambda s: s.seq.num_computed_tokens)
        input_ids: list[int] = []
        positions: list[int] = []
        slots: list[int] = []
        logits_rows: list[int] = []
        sampled: list[ScheduledSeq] = []
        spans: list[PrefillSpan] = []
        bs = self.block_size
        for item in decodes + prefills:
            seq, start = item.seq, item.seq.num_computed_tokens
            end = start + item.num_new_tokens
            first = len(input_ids)
            input_ids.extend(seq.token_ids[start:end])
            positions.extend(range(start, end))
            table = seq.block_table
            slots.extend(table[p // bs] * bs + p % bs for p in range(start, end))
            if first >= len(decodes):
                spans.append(self._prefill_span(table, first, start, end))
            if item.completes:
                logits_rows.append(len(input_ids) - 1)
                sampled.append(item)
        meta = AttentionMetadata(slot_mapping=self._tensor(slots), num_decode=len(decodes), prefills=spans)
        if decodes and self.model.ops.paged_decode:
            meta.paged = self._paged_decode(decodes)
        elif decodes:
            self._decode_metadata(decodes, meta)
        logits = self.model.forward(
            self._tensor(input_ids), self._tensor(positions), self.kv_caches, meta, self._tensor(logits_rows)
        )
        return StepResult(logits, sampled)

    def _prefill_span(self, table: list[int], first: int, start: int, end: int) -> PrefillSpan:
        span = PrefillSpan(first, first + end - start, end, None)
        if start > 0:  # a cached prefix or an earlier chunk: attend over the cache
            blocks = self._tensor([table[: -(-end // self.block_size)]])
            span.gather_index = gather_index(blocks, self.kv_heads, self.num_blocks)
            span.mask = causal_mask_with_context(end - start, end, self.device)
        return span

    def _paged_decode(self, decodes: list[ScheduledSeq]) -> PagedDecode:
        lengths = [s.seq.num_computed_tokens + 1 for s in decodes]
        width = -(-max(lengths) // self.block_size)
        return PagedDecode(self._block_tables(decodes, width), self._tensor(lengths))

    def _block_tables(self, decodes: list[ScheduledSeq], width: int) -> torch.Tensor:
        """[seqs, width] block ids; entries past a sequence's own blocks point at block 0, which the
        kernel never reads and the torch path masks."""
        tables = [s.seq.block_table[:width] for s in decodes]
        return self._tensor([table + [0] * (width - len(table)) for table in tables])

    def _decode_metadata(self, decodes: list[ScheduledSeq], meta: AttentionMetadata) -> None:
        bs = self.block_size
        block_counts = [-(-(s.seq.num_computed_tokens + 1) // bs) for s in decodes]
        offset = 0
        for start, end in split_into_groups(block_counts):
            width = block_counts[end - 1]
            members = decodes[start:end]
            tables = self._block_tables(members, width)
            lens = self._tensor([s.seq.num_computed_tokens + 1 for s in members]).unsqueeze(1)
            cols = torch.arange(width * bs, device=self.device).unsqueeze(0)
            mask = torch.zeros((len(members), width * bs), device=self.device).masked_fill_(
                cols >= lens, float("-inf")
            )
            index = gather_index(tables, self.kv_heads, self.num_blocks)
            meta.decode_groups.append(
                DecodeGroup(start, end, width * bs, index, mask.view(len(members), 1, 1, width * bs), offset)
            )
            offset += index.numel()
        if self._gather_k.shape[0] < offset:
            self._gather_k = torch.empty(
                (offset, *self._row_shape), dtype=self.model.dtype, device=self.device
            )
            self._gather_v = torch.empty_like(self._gather_k)
        meta.gather_k = self._gather_k
        meta.gather_v = self._gather_v

    def _copy_blocks(self, copies: list[CopyOp]) -> None:
        for op in copies:
            self.kv_cache[:, :, :, op.dst].copy_(self.kv_cache[:, :, :, op.src])

    def _tensor(self, values: list[int] | list[list[int]]) -> torch.Tensor:
        return torch.tensor(values, dtype=torch.long, device=self.device)


def _is_decode(item: ScheduledSeq) -> bool:
    """One new token on top of a computed context: the decode path (any chunk of one token qualifies)."""
    return item.num_new_tokens == 1 and item.seq.num_computed_tokens > 0
