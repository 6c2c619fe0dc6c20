"""bfloat16 on CPUs without native low-precision matmul: widened matmuls and decode attention.

The float32 tests elsewhere pin the arithmetic to transformers; these check that the bfloat16 paths
(matmuls of eight rows or more and decode attention computed in float32, weights kept in bfloat16,
with the fused CPU kernels and with plain torch) stay as close to the float32 reference as bfloat16
rounding allows.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from backend.engine.llm_engine import EngineConfig, LLMEngine
from backend.engine.sampling_params import SamplingParams
from backend.layers.linear import UPCAST_MIN_ROWS, UPCAST_TILE_ROWS, Linear
from tests.backend.tiny_models import make_tiny_hf_dir, tiny_model


@pytest.mark.parametrize("rows", [1, UPCAST_MIN_ROWS - 1, UPCAST_MIN_ROWS, 40])
def test_bfloat16_linear_matches_the_float32_product(rows: int) -> None:
    generator = torch.Generator().manual_seed(rows)
    out_features = UPCAST_TILE_ROWS * 2 + 452  # several tiles and a partial one
    weight = torch.randn(out_features, 96, generator=generator).bfloat16()
    bias = torch.randn(out_features, generator=generator).bfloat16()
    x = torch.randn(rows, 96, generator=generator).bfloat16()
    layer = Linear(weight, bias)
    got = layer(x)
    assert got.dtype == torch.bfloat16
    assert got.shape == (rows, out_features)
    exact = F.linear(x.float(), weight.float(), bias.float())
    # One bfloat16 rounding of the result: relative error below 2**-8.
    assert ((got.float() - exact).abs() <= exact.abs() * 2**-8 + 1e-3).all()
    if layer.packed is None and rows < UPCAST_MIN_ROWS:
        assert torch.equal(got, F.linear(x, weight, bias))  # few rows: the native kernel as is


@pytest.mark.parametrize("kernels", [True, False], ids=["fused-cpu", "torch"])
def test_bfloat16_engine_tracks_the_float32_reference(kernels: bool, tmp_path: Path) -> None:
    # Nine prompts: prefill chunks and decode steps of nine rows take the widened paths.
    engine = LLMEngine.from_model(
        make_tiny_hf_dir(tmp_path / "llama", "llama"),
        EngineConfig(dtype="bfloat16", kv_cache_memory_bytes=4 << 20, cpu_kernels=kernels),
    )
    reference = tiny_model("llama")
    generator = torch.Generator().manual_seed(7)
    vocab = engine.model.config.vocab_size
    batch = [torch.randint(3, vocab, (n,), generator=generator).tolist() for n in range(4, 40, 4)]
    params = SamplingParams(max_tokens=5, temperature=0, ignore_eos=True, logprobs=1)
    for i, prompt in enumerate(batch):
        engine.add_request(str(i), prompt, params)
    chosen: dict[str, list[tuple[int, float]]] = {str(i): [] for i in range(len(batch))}
    while engine.has_unfinished_requests():
        for out in engine.step():
            chosen[out.request_id].extend((lp.token_id, lp.logprob) for lp in out.logprobs)
    for i, prompt in enumerate(batch):
        context = list(prompt)
        assert len(chosen[str(i)]) == 5
        for token_id, logprob in chosen[str(i)]:
            with torch.no_grad():
                expected = torch.log_softmax(reference(torch.tensor([context])).logits[0, -1].float(), -1)
            top = torch.topk(expected, 3).indices.tolist()
            assert token_id in top  # greedy in bfloat16 picks one of the reference's best three
            assert logprob == pytest.approx(float(expected[token_id]), abs=0.1)
            context.append(token_id)
