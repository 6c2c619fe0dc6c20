from __future__ import annotations

import numpy as np
import pytest
import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, quants

from backend.loader.dequant import FAST_TYPES, dequantize

Q = GGMLQuantizationType
# Byte offsets of each block's float16 scale fields. Random bytes there could be inf/NaN, whose
# payloads are not part of the contract; every other byte stays random.
SCALE_OFFSETS = {
    Q.Q8_0: (0,),
    Q.Q4_0: (0,),
    Q.Q4_1: (0, 2),
    Q.Q5_0: (0,),
    Q.Q5_1: (0, 2),
    Q.Q4_K: (0, 2),
    Q.Q5_K: (0, 2),
    Q.Q6_K: (208,),
    Q.Q2_K: (80, 82),
}
BLOCK_TYPES = sorted(SCALE_OFFSETS, key=lambda t: t.name)


def random_blocks(qtype: GGMLQuantizationType, rows: int, blocks_per_row: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    _, type_size = GGML_QUANT_SIZES[qtype]
    raw = rng.integers(0, 256, size=(rows * blocks_per_row, type_size), dtype=np.uint8)
    for offset in SCALE_OFFSETS[qtype]:
        scales = rng.standard_normal(size=(raw.shape[0],)).astype(np.float16)
        raw[:, offset : offset + 2] = scales.view(np.uint8).reshape(-1, 2)
    return raw.reshape(rows, blocks_per_row * type_size)


@pytest.mark.parametrize("qtype", BLOCK_TYPES, ids=lambda t: t.name)
def test_block_types_match_gguf_bit_for_bit(qtype: GGMLQuantizationType) -> None:
    block_size, _ = GGML_QUANT_SIZES[qtype]
    # Enough rows that the kernels work through several chunks, plus a ragged last one.
    rows, blocks_per_row = 37, 40
    raw = random_blocks(qtype, rows, blocks_per_row)
    expected = quants.dequantize(raw, qtype)
    got = dequantize(raw, qtype, (rows, blocks_per_row * block_size), torch.float32)
    assert got.shape == (rows, blocks_per_row * block_size)
    assert np.isfinite(expected).all()
    assert np.array_equal(got.numpy().view(np.uint32), expected.view(np.uint32))


@pytest.mark.parametrize("qtype", [Q.Q8_0, Q.Q4_1, Q.Q6_K], ids=lambda t: t.name)
def test_bfloat16_output_is_the_rounded_float32_result(qtype: GGMLQuantizationType) -> None:
    block_size, _ = GGML_QUANT_SIZES[qtype]
    raw = random_blocks(qtype, 8, 4, seed=1)
    expected = torch.from_numpy(quants.dequantize(raw, qtype)).to(torch.bfloat16)
    got = dequantize(raw, qtype, (8, 4 * block_size), torch.bfloat16)
    assert got.dtype == torch.bfloat16
    assert torch.equal(got, expected)


@pytest.mark.parametrize(
    ("qtype", "source"),
    [(Q.F32, np.float32), (Q.F16, np.float16)],
    ids=["F32", "F16"],
)
def test_float_types_match_gguf(qtype: GGMLQuantizationType, source: type[np.floating]) -> None:
    values = np.random.default_rng(2).standard_normal((5, 70)).astype(source)
    got = dequantize(values, qtype, (5, 70), torch.float32)
    assert np.array_equal(got.numpy(), quants.dequantize(values, qtype))


def test_bf16_matches_gguf() -> None:
    values = np.random.default_rng(3).standard_normal((4, 64)).astype(np.float32)
    stored = quants.quantize(values, Q.BF16)
    got = dequantize(stored, Q.BF16, (4, 64), torch.float32)
    assert np.array_equal(got.numpy(), quants.dequantize(stored, Q.BF16))
    assert torch.equal(dequantize(stored, Q.BF16, (4, 64), torch.bfloat16), got.to(torch.bfloat16))


def test_result_owns_its_memory() -> None:
    values = np.ones((2, 32), dtype=np.float32)
    got = dequantize(values, Q.F32, (2, 32), torch.float32)
    values[:] = 5
    assert torch.equal(got, torch.ones(2, 32))


def test_fast_path_covers_the_required_types() -> None:
    assert {Q.F32, Q.F16, Q.BF16, Q.Q8_0, Q.Q4_0, Q.Q4_1, Q.Q4_K, Q.Q6_K} <= FAST_TYPES


def test_wrong_byte_count_is_rejected() -> None:
    raw = random_blocks(Q.Q8_0, 2, 2)
    with pytest.raises(ValueError, match="holds 68 bytes, expected 136"):
        dequantize(raw[:1], Q.Q8_0, (2, 64), torch.float32)
