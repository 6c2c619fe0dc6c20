"""The model and paged attention against transformers on identical random weights (float32).

Sequences run through the real scheduler, block manager and model runner: chunked prefill,
mixed prefill and decode batches, and prefix-cache hits, each checked logit by logit.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from transformers import LlamaConfig, Qwen2Config
from transformers import LlamaForCausalLM as HfLlama
from transformers import Qwen2ForCausalLM as HfQwen2

from backend.engine.block_manager import BlockManager
from backend.engine.model_runner import ModelRunner
from backend.engine.sampling_params import SamplingParams
from backend.engine.scheduler import Scheduler, SchedulerConfig
from backend.engine.sequence import Sequence
from backend.models.config import ModelConfig, RopeScaling
from backend.models.llama import LlamaForCausalLM

VOCAB = 320
COMMON: dict[str, Any] = {
    "vocab_size": VOCAB,
    "hidden_size": 64,
    "intermediate_size": 160,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 256,
    "rope_theta": 10000.0,
}


def build(arch: str, **extra: Any) -> tuple[torch.nn.Module, LlamaForCausalLM]:
    torch.manual_seed(1234)
    if arch == "qwen2":
        hf: torch.nn.Module = HfQwen2(Qwen2Config(**COMMON, tie_word_embeddings=True, **extra))
    else:
        hf = HfLlama(LlamaConfig(**COMMON, tie_word_embeddings=False, **extra))
    hf.eval()
    hc: Any = hf.config
    scaling = None
    if extra.get("rope_scaling"):
        s = extra["rope_scaling"]
        scaling = RopeScaling(
            "llama3",
            s["factor"],
            s["low_freq_factor"],
            s["high_freq_factor"],
            s["original_max_position_embeddings"],
        )
    config = ModelConfig(
        architecture="qwen2" if arch == "qwen2" else "llama",
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=160,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        rms_norm_eps=hc.rms_norm_eps,
        rope_theta=10000.0,
        max_position_embeddings=256,
        tie_word_embeddings=arch == "qwen2",
        attention_bias=arch == "qwen2",
        rope_scaling=scaling,
    )
    weights = {k: v.detach().clone() for k, v in hf.state_dict().items()}
    return hf, LlamaForCausalLM(config, weights, device=torch.device("cpu"))


def reference_logits(hf: torch.nn.Module, tokens: list[int]) -> torch.Tensor:
    with torch.no_grad():
        logits: torch.Tensor = hf(torch.tensor([tokens])).logits[0, -1].float()
    return logits


def drive(
    hf: torch.nn.Module,
    model: LlamaForCausalLM,
    prompts: list[list[int]],
    *,
    new_tokens: int,
    budget: int,
    num_blocks: int = 96,
    block_size: int = 4,
) -> tuple[float, list[list[int]], BlockManager]:
    """Greedy-decode every prompt together; compare each sampled row's logits with transformers."""
    blocks = BlockManager(num_blocks, block_size)
    scheduler = Scheduler(SchedulerConfig(max_num_seqs=8, max_num_batched_tokens=budget), blocks)
    runner = ModelRunner(model, num_blocks=num_blocks, block_size=block_size)
    seqs = [
        Sequence(f"r{i}", p, SamplingParams(max_tokens=new_tokens, temperature=0), arrival_time=float(i))
        for i, p in enumerate(prompts)
    ]
    for s in seqs:
        scheduler.add(s)
    worst = 0.0
    while scheduler.has_work():
        out = scheduler.schedule()
        result = runner.execute(out)
        for item in out.scheduled:
            item.seq.num_computed_tokens += item.num_new_tokens
            blocks.commit(item.seq)
        for row, item in enumerate(result.sampled):
            seq = item.seq
            expected = reference_logits(hf, seq.token_ids)
            worst = max(worst, (expected - result.logits[row]).abs().max().item())
            assert int(result.logits[row].argmax()) == int(expected.argmax())
            seq.token_ids.append(int(result.logits[row].argmax()))
            if seq.num_output_tokens >= new_tokens:
                scheduler.finish(seq)
    return worst, [s.output_token_ids for s in seqs], blocks


def prompts_of(lengths: list[int], seed: int = 0) -> list[list[int]]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(0, VOCAB, (n,), generator=generator).tolist() for n in lengths]


@pytest.mark.parametrize(
    ("arch", "extra"),
    [
        ("llama", {}),
        ("qwen2", {}),
        (
            "llama",
            {
                "rope_scaling": {
                    "rope_type": "llama3",
                    "factor": 8.0,
                    "low_freq_factor": 1.0,
                    "high_freq_factor": 4.0,
                    "original_max_position_embeddings": 64,
                }
            },
        ),
    ],
    ids=["llama-gqa", "qwen2-bias-tied", "llama3-rope-scaling"],
)
def test_logits_match_transformers_for_prefill_and_every_decode_step(
    arch: str, extra: dict[str, Any]
) -> None:
    hf, model = build(arch, **extra)
    worst, _, blocks = drive(hf, model, prompts_of([1, 7, 23, 40]), new_tokens=6, budget=512)
    assert worst < 1e-4
    assert blocks.num_free_blocks == blocks.num_blocks


def test_chunked_prefill_and_mixed_batches_match_transformers() -> None:
    hf, model = build("llama")
    # A budget of 9 tokens splits every prompt into chunks and mixes chunks with decodes.
    worst, _, _ = drive(hf, model, prompts_of([30, 17, 5, 44], seed=3), new_tokens=5, budget=9)
    assert worst < 1e-4


def test_prefix_cache_hits_give_the_same_logits() -> None:
    hf, model = build("llama")
    shared = prompts_of([24], seed=5)[0]
    prompts = [shared + tail for tail in prompts_of([3, 9, 1], seed=6)]
    # A 27-token step budget computes the first prompt alone; the others then hit its cached blocks.
    worst, outputs, blocks = drive(hf, model, prompts, new_tokens=4, budget=27)
    assert worst < 1e-4
    assert blocks.stats.hit_tokens == 2 * 24
    assert all(len(o) == 4 for o in outputs)
