"""The fused CPU kernels against the plain torch path they stand in for.

The kernels must be built here (``make bootstrap`` builds them; CI has a C++ compiler), so a failed
build fails these tests instead of silently leaving the engine on the slower path.
"""

from __future__ import annotations

import pytest
import torch

from backend.layers import fused
from backend.layers.attention import AttentionMetadata, DecodeGroup, LayerCache, gather_index, paged_attention
from backend.layers.ops import FusedCpuOps, LayerOps, PagedDecode, TorchOps, disagreement, layer_ops

DTYPES = [torch.float32, torch.bfloat16, torch.float16]


@pytest.fixture(scope="module")
def fused_ops() -> FusedCpuOps:
    kernels = fused.cpu_kernels()
    assert kernels is not None, "the CPU kernels did not build"
    return FusedCpuOps(kernels)


def rand(gen: torch.Generator, dtype: torch.dtype, *shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=gen).to(dtype)


def close(got: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype) -> bool:
    """Within two roundings in ``dtype`` of the reference (float32: accumulation order only)."""
    ulp = {torch.float32: 2e-6, torch.bfloat16: 2**-7, torch.float16: 2**-10}[dtype]
    g, e = got.float(), expected.float()
    return got.shape == expected.shape and bool(((g - e).abs() <= 2 * ulp * e.abs() + 2 * ulp).all())


def test_the_cpu_engine_picks_the_kernels_and_the_switch_turns_them_off(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert layer_ops(torch.device("cpu"), torch.bfloat16).name == "fused-cpu"
    monkeypatch.setenv("WARDEN_CPU_KERNELS", "0")
    assert fused.cpu_kernels.__wrapped__() is None


@pytest.mark.parametrize("dtype", DTYPES)
def test_elementwise_kernels_equal_torch_bit_for_bit(fused_ops: FusedCpuOps, dtype: torch.dtype) -> None:
    gen, torch_ops = torch.Generator().manual_seed(1), TorchOps()
    gate_up = rand(gen, dtype, 5, 2 * 200)
    assert torch.equal(fused_ops.silu_mul(gate_up), torch_ops.silu_mul(gate_up))
    # q and k as they sit in the fused projection: a strided view of a wider row.
    qkv = rand(gen, dtype, 6, (9 + 3 + 3) * 64)
    qk = qkv[:, : 12 * 64].view(-1, 12, 64)
    cos, sin = rand(gen, dtype, 6, 1, 64), rand(gen, dtype, 6, 1, 64)
    assert torch.equal(fused_ops.rotate(qk, cos, sin), torch_ops.rotate(qk, cos, sin))
    residual, delta, weight = rand(gen, dtype, 7, 576), rand(gen, dtype, 7, 576), rand(gen, dtype, 576)
    hidden, normed = fused_ops.add_rms_norm(residual, delta, weight, 1e-5)
    expected_hidden, expected_normed = torch_ops.add_rms_norm(residual, delta, weight, 1e-5)
    assert torch.equal(hidden, expected_hidden)
    assert close(normed, expected_normed, dtype)
    normed = fused_ops.rms_norm(residual, weight, 1e-5)
    assert close(normed, torch_ops.rms_norm(residual, weight, 1e-5), dtype)


def random_paged_cache(
    gen: torch.Generator, dtype: torch.dtype, kv_heads: int, dim: int, lengths: list[int]
) -> tuple[LayerCache, PagedDecode]:
    """A cache whose sequences own shuffled, interleaved blocks, and their padded block tables."""
    block_size = 16
    needed = [-(-n // block_size) for n in lengths]
    num_blocks = sum(needed) + 3
    kv = rand(gen, dtype, 2, kv_heads, num_blocks, block_size, dim)
    order = torch.randperm(num_blocks, generator=gen).tolist()
    width, tables, taken = max(needed), [], 0
    for count in needed:
        tables.append(order[taken : taken + count] + [0] * (width - count))
        taken += count
    return LayerCache.of(kv), PagedDecode(torch.tensor(tables), torch.tensor(lengths))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("heads", "kv_heads", "dim"), [(9, 3, 64), (4, 4, 16), (8, 2, 72)])
def test_paged_decode_attention_matches_both_torch_paths(
    fused_ops: FusedCpuOps, dtype: torch.dtype, heads: int, kv_heads: int, dim: int
) -> None:
    gen = torch.Generator().manual_seed(heads * dim)
    lengths = [1, 15, 16, 17, 100, 33]  # block boundaries on either side
    cache, paged = random_paged_cache(gen, dtype, kv_heads, dim, lengths)
    q = rand(gen, dtype, len(lengths), heads + 2 * kv_heads, dim)[:, :heads]  # strided, as in the model
    scale = dim**-0.5
    got = fused_ops.decode_attention(q, cache.k_cache, cache.v_cache, paged, scale)
    assert close(got, TorchOps().decode_attention(q, cache.k_cache, cache.v_cache, paged, scale), dtype)
    # The gathered, padded groups of the plain path agree too.
    assert close(got, grouped_decode(q, cache, paged, scale), dtype)


def grouped_decode(q: torch.Tensor, cache: LayerCache, paged: PagedDecode, scale: float) -> torch.Tensor:
    kv_heads, num_blocks, block_size, dim = cache.k_cache.shape
    rows, width = paged.block_tables.shape
    index = gather_index(paged.block_tables, kv_heads, num_blocks)
    cols = torch.arange(width * block_size).unsqueeze(0)
    padding = cols >= paged.context_lens.unsqueeze(1)
    mask = torch.zeros(rows, width * block_size).masked_fill_(padding, float("-inf"))
    group = DecodeGroup(0, rows, width * block_size, index, mask.view(rows, 1, 1, -1), 0)
    buffer = torch.empty(index.numel(), block_size, dim, dtype=q.dtype)
    meta = AttentionMetadata(
        torch.empty(0, dtype=torch.long), rows, None, [group], [], buffer, torch.empty_like(buffer)
    )
    k = v = torch.empty(0, kv_heads, dim, dtype=q.dtype)  # nothing new to write
    return paged_attention(q, k, v, cache, meta, scale, TorchOps())


def test_bad_block_tables_are_refused_not_read(fused_ops: FusedCpuOps) -> None:
    gen = torch.Generator().manual_seed(3)
    cache, paged = random_paged_cache(gen, torch.float32, 2, 16, [20])
    q = rand(gen, torch.float32, 1, 4, 16)
    outside = PagedDecode(torch.tensor([[0, cache.k_cache.shape[1]]]), paged.context_lens)
    too_long = PagedDecode(paged.block_tables, torch.tensor([33]))
    for bad in (outside, too_long):
        with pytest.raises(RuntimeError, match="out of range"):
            fused_ops.decode_attention(q, cache.k_cache, cache.v_cache, bad, 0.25)


class _Off(TorchOps):
    """The reference, except one norm off by a scale: what a miscompiled kernel would look like."""

    def rms_norm(self, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        return super().rms_norm(x, weight, eps) * 1.1


def test_the_probe_names_an_operation_that_disagrees(fused_ops: LayerOps) -> None:
    for dtype in DTYPES:
        assert disagreement(fused_ops, TorchOps(), dtype) is None
        assert disagreement(_Off(), TorchOps(), dtype) == "rms_norm"
