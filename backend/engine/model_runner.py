"""Turns a scheduled step into flat batch tensors, runs the model and returns logits.

Owns the KV cache (one tensor for all layers) and the gather buffers that decode attention
reuses across layers and steps: allocating them afresh each step costs several times more than
the gather itself on CPU.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from backend.engine.block_manager import CopyOp
from backend.engine.scheduler import ScheduledSeq, SchedulerOutput
from backend.layers.attention import AttentionMetadata, PrefillSpan, causal_mask_with_context
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
        self.kv_cache = torch.zeros(
            cfg.num_hidden_layers,
            2,
            num_blocks,
            block_size,
            cfg.num_key_value_heads,
            cfg.head_dim,
            dtype=model.dtype,
            device=self.device,
        )
        self.kv_caches = list(self.kv_cache.unbind(0))
        self._gather_shape = (block_size, cfg.num_key_value_heads, cfg.head_dim)
        self._gather_k = torch.empty((0, *self._gather_shape), dtype=model.dtype, device=self.device)
        self._gather_v = torch.empty_like(self._gather_k)

    @torch.inference_mode()
    def execute(self, out: SchedulerOutput) -> StepResult:
        self._copy_blocks(out.copies)
        # Decode tokens (one per sequence) first, then prefill chunks: attention splits there.
        decodes = [s for s in out.scheduled if s.num_new_tokens == 1 and s.seq.num_computed_tokens > 0]
        prefills = [s for s in out.scheduled if not (s.num_new_tokens == 1 and s.seq.num_computed_tokens > 0)]
        ordered = [(item, False) for item in decodes] + [(item, True) for item in prefills]
        input_ids: list[int] = []
        positions: list[int] = []
        slots: list[int] = []
        logits_rows: list[int] = []
        sampled: list[ScheduledSeq] = []
        spans: list[PrefillSpan] = []
        masks: dict[int, torch.Tensor] = {}
        bs = self.block_size
        for item, is_prefill in ordered:
            seq, start = item.seq, item.seq.num_computed_tokens
            end = start + item.num_new_tokens
            first = len(input_ids)
            input_ids.extend(seq.token_ids[start:end])
            positions.extend(range(start, end))
            table = seq.block_table
            slots.extend(table[p // bs] * bs + p % bs for p in range(start, end))
            if is_prefill:
                block_ids = None
                if start > 0:
                    block_ids = torch.tensor(table[: -(-end // bs)], dtype=torch.long, device=self.device)
                    masks[first] = causal_mask_with_context(end - start, end, self.device)
                spans.append(PrefillSpan(first, len(input_ids), end, block_ids))
            if item.completes:
                logits_rows.append(len(input_ids) - 1)
                sampled.append(item)
        meta = AttentionMetadata(
            slot_mapping=self._tensor(slots), num_decode=len(decodes), prefills=spans, prefill_masks=masks
        )
        if decodes:
            self._decode_metadata(decodes, meta)
        logits = self.model.forward(
            self._tensor(input_ids), self._tensor(positions), self.kv_caches, meta, self._tensor(logits_rows)
        )
        return StepResult(logits, sampled)

    def _decode_metadata(self, decodes: list[ScheduledSeq], meta: AttentionMetadata) -> None:
        bs = self.block_size
        context_lens = [s.seq.num_computed_tokens + 1 for s in decodes]
        max_blocks = -(-max(context_lens) // bs)
        tables = [s.seq.block_table[:max_blocks] + [0] * (max_blocks - len(s.seq.block_table)) for s in decodes]
        # Padded entries point at block 0; the mask hides them.
        meta.decode_block_tables = self._tensor(tables)
        lens = self._tensor(context_lens).unsqueeze(1)
        cols = torch.arange(max_blocks * bs, device=self.device).unsqueeze(0)
        meta.decode_mask = (cols < lens).view(len(decodes), 1, 1, max_blocks * bs)
        rows = len(decodes) * max_blocks
        if self._gather_k.shape[0] < rows:
            self._gather_k = torch.empty((rows, *self._gather_shape), dtype=self.model.dtype, device=self.device)
            self._gather_v = torch.empty_like(self._gather_k)
        meta.gather_k = self._gather_k[:rows]
        meta.gather_v = self._gather_v[:rows]

    def _copy_blocks(self, copies: list[CopyOp]) -> None:
        for op in copies:
            self.kv_cache[:, :, op.dst].copy_(self.kv_cache[:, :, op.src])

    def _tensor(self, values: list[int] | list[list[int]]) -> torch.Tensor:
        return torch.tensor(values, dtype=torch.long, device=self.device)
