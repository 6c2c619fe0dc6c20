"""The small operations of a decoder layer behind one interface: plain torch, or fused CPU kernels.

``TorchOps`` is the reference and runs on every device. ``FusedCpuOps`` does the same work with
the kernels of ``cpu_kernels.cpp``, one call per operation instead of several torch ops each, and
reads decode attention straight from the paged cache through block tables (no gathered copy, no
padding). It is chosen only on CPU, and only once a probe shows it agrees with the reference.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from types import ModuleType
from typing import Protocol

import torch
import torch.nn.functional as F

from backend.layers import fused
from backend.layers.norm import rms_norm

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class PagedDecode:
    """Decode attention's inputs when it reads the cache through block tables."""

    block_tables: torch.Tensor  # [seqs, max_blocks] int64, padded with 0 past each sequence's blocks
    context_lens: torch.Tensor  # [seqs] int64, the new token included


class LayerOps(Protocol):
    name: str
    # Decode attention reads the cache through block tables (``PagedDecode``), not gathered groups.
    paged_decode: bool

    def rms_norm(self, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor: ...

    def add_rms_norm(
        self, residual: torch.Tensor, delta: torch.Tensor, weight: torch.Tensor, eps: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``residual + delta`` and its RMSNorm."""
        ...

    def rotate(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """``x * cos + roll(x, dim // 2) * sin`` for ``x``: [tokens, heads, dim], as a new tensor."""
        ...

    def silu_mul(self, gate_up: torch.Tensor) -> torch.Tensor:
        """``silu(gate) * up`` for ``gate_up`` = [gate | up] along the last dimension."""
        ...

    def decode_attention(
        self, q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, paged: PagedDecode, scale: float
    ) -> torch.Tensor:
        """One query per sequence (``q``: [seqs, heads, dim]) over [kv_heads, blocks, block_size, dim]."""
        ...


class TorchOps:
    """The reference: plain torch ops, the same on every device."""

    name = "torch"
    paged_decode = False

    def rms_norm(self, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        return rms_norm(x, weight, eps)

    def add_rms_norm(
        self, residual: torch.Tensor, delta: torch.Tensor, weight: torch.Tensor, eps: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = residual + delta
        return hidden, rms_norm(hidden, weight, eps)

    def rotate(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        return x * cos + x.roll(x.shape[-1] // 2, dims=-1) * sin

    def silu_mul(self, gate_up: torch.Tensor) -> torch.Tensor:
        gate, up = gate_up.chunk(2, dim=-1)
        return F.silu(gate) * up

    def decode_attention(
        self, q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, paged: PagedDecode, scale: float
    ) -> torch.Tensor:
        """Per sequence, gathered and in float32: the reference for the fused kernel."""
        kv_heads, _, block_size, dim = k_cache.shape
        group = q.shape[1] // kv_heads
        out = torch.empty_like(q)
        lengths = paged.context_lens.tolist()
        for row, (table, length) in enumerate(zip(paged.block_tables, lengths, strict=True)):
            blocks = table[: -(-length // block_size)]
            keys = k_cache[:, blocks].reshape(kv_heads, -1, dim)[:, :length].float()
            values = v_cache[:, blocks].reshape(kv_heads, -1, dim)[:, :length].float()
            queries = (q[row] * scale).float().view(kv_heads, group, dim)
            probs = torch.softmax(torch.bmm(queries, keys.transpose(1, 2)), dim=-1)
            out[row] = torch.bmm(probs, values).view(-1, dim).to(q.dtype)
        return out


class FusedCpuOps:
    """The fused CPU kernels; same arguments and results as ``TorchOps`` (within rounding)."""

    name = "fused-cpu"
    paged_decode = True

    def __init__(self, kernels: ModuleType) -> None:
        self._k = kernels

    def rms_norm(self, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        out: torch.Tensor = self._k.rms_norm(x, weight, eps)
        return out

    def add_rms_norm(
        self, residual: torch.Tensor, delta: torch.Tensor, weight: torch.Tensor, eps: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        hidden, normed = self._k.add_rms_norm(residual, delta, weight, eps)
        return hidden, normed

    def rotate(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self._k.rotary(x, cos, sin)
        return out

    def silu_mul(self, gate_up: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self._k.silu_mul(gate_up)
        return out

    def decode_attention(
        self, q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, paged: PagedDecode, scale: float
    ) -> torch.Tensor:
        out: torch.Tensor = self._k.decode_attention(
            q, k_cache, v_cache, paged.block_tables, paged.context_lens, scale
        )
        return out


def layer_ops(device: torch.device, dtype: torch.dtype) -> LayerOps:
    """The fused kernels on CPU when they build and agree with the reference on a probe; else torch."""
    return _cpu_ops(dtype) if device.type == "cpu" else TorchOps()


@cache
def _cpu_ops(dtype: torch.dtype) -> LayerOps:
    """Decided once per dtype and process: every model loaded later reuses the answer."""
    kernels = fused.cpu_kernels()
    if kernels is None:
        return TorchOps()
    ops = FusedCpuOps(kernels)
    try:
        mismatch = disagreement(ops, TorchOps(), dtype)
    except RuntimeError:
        logger.warning("CPU kernels failed their probe; using the plain torch path")
        return TorchOps()
    if mismatch is not None:
        logger.warning("CPU kernels disagree with the plain torch path; using it", extra={"op": mismatch})
        return TorchOps()
    return ops


# Largest difference allowed on the probe, relative to the reference's largest magnitude: a few
# roundings in the dtype (the kernels accumulate in another order).
PROBE_TOLERANCE = {torch.float32: 1e-5, torch.bfloat16: 2e-2, torch.float16: 4e-3}


def disagreement(ops: LayerOps, reference: LayerOps, dtype: torch.dtype) -> str | None:
    """The first operation whose results differ from the reference on random inputs, or ``None``."""
    gen = torch.Generator().manual_seed(0)

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen).to(dtype)

    x, delta, weight = rand(3, 64), rand(3, 64), rand(64)
    qk, cos, sin = rand(3, 4, 16), rand(3, 1, 16), rand(3, 1, 16)
    k_cache, v_cache, q = rand(2, 5, 4, 16), rand(2, 5, 4, 16), rand(2, 4, 16)
    paged = PagedDecode(torch.tensor([[3, 1, 0], [4, 2, 0]]), torch.tensor([7, 5]))
    cases: dict[str, Callable[[LayerOps], torch.Tensor]] = {
        "rms_norm": lambda o: o.rms_norm(x, weight, 1e-5),
        "add_rms_norm": lambda o: torch.cat(o.add_rms_norm(x, delta, weight, 1e-5)),
        "rotate": lambda o: o.rotate(qk, cos, sin),
        "silu_mul": lambda o: o.silu_mul(x),
        "decode_attention": lambda o: o.decode_attention(q, k_cache, v_cache, paged, 0.25),
    }
    for name, run in cases.items():
        got, expected = run(ops).float(), run(reference).float()
        scale = expected.abs().max().item() or 1.0
        tolerance = PROBE_TOLERANCE[dtype] * scale
        if got.shape != expected.shape or (got - expected).abs().max().item() > tolerance:
            return name
    return None
