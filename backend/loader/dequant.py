"""Dequantizing GGUF tensor data straight into the compute dtype.

The kernels mirror ``gguf.quants`` operation for operation (same float32 products and sums in the
same order), so their float32 output is bit-identical to ``gguf.quants.dequantize``; the tests check
this on random blocks. They run in torch over chunks small enough to stay in cache and below
torch's parallel grain size: one thread per chunk avoids waking a thread pool thousands of times,
which costs more than it gains on a small, shared machine. Types without a kernel here fall back to
``gguf.quants.dequantize``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, quants

# (n_blocks, type_size) uint8 -> (n_blocks, block_size) float32
Kernel = Callable[[torch.Tensor], torch.Tensor]

# torch's intra-op grain size: element-wise ops on at most this many elements run on one thread.
_CHUNK_ELEMENTS = 32768


def _f16(column: torch.Tensor) -> torch.Tensor:
    """A two-byte column of little-endian float16 scales as an (n, 1) float32 tensor."""
    return column.contiguous().view(torch.float16).float()


def _nibbles(packed: torch.Tensor) -> torch.Tensor:
    """Low nibbles then high nibbles along the last axis, as ggml packs a 32-value block."""
    return torch.cat((packed & 0x0F, packed >> 4), dim=-1)


def _bits(qh: torch.Tensor, count: int) -> torch.Tensor:
    """Bits 0..count-1 of each int32 in the (n, 1) column ``qh``, as (n, count) uint8."""
    shifts = torch.arange(count, dtype=torch.int32)
    # An arithmetic shift still leaves bit j in place after ``>> j``; ``& 1`` drops the sign fill.
    return ((qh >> shifts) & 1).to(torch.uint8)


def _q8_0(b: torch.Tensor) -> torch.Tensor:
    d = _f16(b[:, 0:2])
    x = b[:, 2:].contiguous().view(torch.int8).float()
    return x * d


def _q4_0(b: torch.Tensor) -> torch.Tensor:
    d = _f16(b[:, 0:2])
    q = _nibbles(b[:, 2:]).float().sub_(8)
    return d * q


def _q4_1(b: torch.Tensor) -> torch.Tensor:
    d = _f16(b[:, 0:2])
    m = _f16(b[:, 2:4])
    q = _nibbles(b[:, 4:]).float()
    return q.mul_(d).add_(m)


def _q5_0(b: torch.Tensor) -> torch.Tensor:
    d = _f16(b[:, 0:2])
    high = _bits(b[:, 2:6].contiguous().view(torch.int32), 32)
    q = (_nibbles(b[:, 6:]) | (high << 4)).float().sub_(16)
    return d * q


def _q5_1(b: torch.Tensor) -> torch.Tensor:
    d = _f16(b[:, 0:2])
    m = _f16(b[:, 2:4])
    high = _bits(b[:, 4:8].contiguous().view(torch.int32), 32)
    q = (_nibbles(b[:, 8:]) | (high << 4)).float()
    return q.mul_(d).add_(m)


def _k_scales(packed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The eight 6-bit scales and eight 6-bit mins packed into 12 bytes (Q4_K and Q5_K)."""
    n = packed.shape[0]
    s = packed.reshape(n, 3, 4)
    d, m, m_d = s[:, 0], s[:, 1], s[:, 2]
    scales = torch.cat((d & 0x3F, (m_d & 0x0F) | ((d >> 2) & 0x30)), dim=-1)
    mins = torch.cat((m & 0x3F, (m_d >> 4) | ((m >> 2) & 0x30)), dim=-1)
    return scales, mins


def _q4_k(b: torch.Tensor) -> torch.Tensor:
    n = b.shape[0]
    scales, mins = _k_scales(b[:, 4:16])
    d = (_f16(b[:, 0:2]) * scales.float()).view(n, 8, 1)
    dm = (_f16(b[:, 2:4]) * mins.float()).view(n, 8, 1)
    qs = b[:, 16:].reshape(n, 4, 32)
    q = torch.stack((qs & 0x0F, qs >> 4), dim=2).reshape(n, 8, 32).float()
    return (d * q - dm).reshape(n, 256)


def _q5_k(b: torch.Tensor) -> torch.Tensor:
    n = b.shape[0]
    scales, mins = _k_scales(b[:, 4:16])
    d = (_f16(b[:, 0:2]) * scales.float()).view(n, 8, 1)
    dm = (_f16(b[:, 2:4]) * mins.float()).view(n, 8, 1)
    qh = b[:, 16:48].reshape(n, 1, 32) >> torch.arange(8, dtype=torch.uint8).view(1, 8, 1)
    qs = b[:, 48:].reshape(n, 4, 32)
    ql = torch.stack((qs & 0x0F, qs >> 4), dim=2).reshape(n, 8, 32)
    q = (ql | ((qh & 1) << 4)).float()
    return (d * q - dm).reshape(n, 256)


_Q6_HIGH_SHIFTS = torch.tensor([0, 2, 4, 6], dtype=torch.uint8).view(1, 1, 4, 1)


def _q6_k(b: torch.Tensor) -> torch.Tensor:
    n = b.shape[0]
    scales = b[:, 192:208].contiguous().view(torch.int8).float()
    d = (_f16(b[:, 208:210]) * scales).view(n, 16, 1)
    ql = b[:, :128].reshape(n, 2, 64)
    ql = torch.stack((ql & 0x0F, ql >> 4), dim=2).reshape(n, 8, 32)
    qh = ((b[:, 128:192].reshape(n, 2, 1, 32) >> _Q6_HIGH_SHIFTS) & 3).reshape(n, 8, 32)
    q = (ql | (qh << 4)).to(torch.int8).sub_(32).reshape(n, 16, 16).float()
    return (d * q).reshape(n, 256)


_KERNELS: dict[GGMLQuantizationType, Kernel] = {
    GGMLQuantizationType.Q8_0: _q8_0,
    GGMLQuantizationType.Q4_0: _q4_0,
    GGMLQuantizationType.Q4_1: _q4_1,
    GGMLQuantizationType.Q5_0: _q5_0,
    GGMLQuantizationType.Q5_1: _q5_1,
    GGMLQuantizationType.Q4_K: _q4_k,
    GGMLQuantizationType.Q5_K: _q5_k,
    GGMLQuantizationType.Q6_K: _q6_k,
}

_FLOATS: dict[GGMLQuantizationType, tuple[type[np.generic], torch.dtype]] = {
    GGMLQuantizationType.F32: (np.float32, torch.float32),
    GGMLQuantizationType.F16: (np.float16, torch.float16),
    GGMLQuantizationType.BF16: (np.uint16, torch.bfloat16),
}

FAST_TYPES = frozenset(_KERNELS) | frozenset(_FLOATS)


def dequantize(
    data: np.ndarray, qtype: GGMLQuantizationType, shape: tuple[int, ...], dtype: torch.dtype
) -> torch.Tensor:
    """``data`` (a tensor's bytes, any view) as a new ``dtype`` tensor of ``shape`` (row-major order)."""
    if qtype not in GGML_QUANT_SIZES:
        raise ValueError(f"unknown GGML tensor type {qtype!r}")
    block_size, type_size = GGML_QUANT_SIZES[qtype]
    count = math.prod(shape)
    raw = np.ascontiguousarray(data).reshape(-1).view(np.uint8)
    if count % block_size or raw.size != count // block_size * type_size:
        raise ValueError(
            f"{qtype.name} data holds {raw.size} bytes, expected {count // block_size * type_size} "
            f"for shape {list(shape)}"
        )
    if not raw.flags.writeable:
        # torch refuses to wrap read-only buffers without a warning; only callers' test data gets here.
        raw = raw.copy()
    out = torch.empty(count // block_size, block_size, dtype=dtype)
    if qtype in _FLOATS:
        np_type, torch_type = _FLOATS[qtype]
        source = torch.from_numpy(raw.view(np_type)).view(torch_type).view(-1, 1)
        _copy_chunks(out, source, lambda rows: rows)
    elif qtype in _KERNELS:
        _copy_chunks(out, torch.from_numpy(raw).view(-1, type_size), _KERNELS[qtype])
    else:
        out.copy_(torch.from_numpy(quants.dequantize(raw.reshape(-1, type_size), qtype)).view_as(out))
    return out.view(shape)


def _copy_chunks(out: torch.Tensor, blocks: torch.Tensor, kernel: Kernel) -> None:
    step = max(1, _CHUNK_ELEMENTS // out.shape[1])
    for start in range(0, out.shape[0], step):
        out[start : start + step].copy_(kernel(blocks[start : start + step]))
