"""LLMEngine end to end on tiny checkpoints loaded from disk, against transformers and itself."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from backend.engine.llm_engine import EngineConfig, InvalidRequestError, LLMEngine
from backend.engine.output import RequestOutput
from backend.engine.sampling_params import SamplingParams
from tests.backend.tiny_models import make_tiny_gguf, make_tiny_hf_dir, tiny_model

GREEDY = SamplingParams(max_tokens=8, temperature=0, ignore_eos=True)


def run(engine: LLMEngine, max_steps: int = 10_000) -> dict[tuple[str, int], list[RequestOutput]]:
    """Step until idle; every output grouped by (request id, choice index)."""
    outputs: dict[tuple[str, int], list[RequestOutput]] = {}
    for _ in range(max_steps):
        if not engine.has_unfinished_requests():
            return outputs
        for out in engine.step():
            outputs.setdefault((out.request_id, out.index), []).append(out)
    raise AssertionError("engine did not finish")


def tokens(outs: list[RequestOutput]) -> list[int]:
    return [t for o in outs for t in o.new_token_ids]


def text(outs: list[RequestOutput]) -> str:
    return "".join(o.text_delta for o in outs)


def prompts(lengths: list[int], vocab: int, seed: int = 0) -> list[list[int]]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(3, vocab, (n,), generator=generator).tolist() for n in lengths]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny")
    return {
        "llama-hf": make_tiny_hf_dir(root / "llama-hf", "llama"),
        "llama-gguf": make_tiny_gguf(root / "llama-gguf", "llama", "F32"),
        "qwen2-hf": make_tiny_hf_dir(root / "qwen2-hf", "qwen2"),
        "qwen2-gguf": make_tiny_gguf(root / "qwen2-gguf", "qwen2", "F32"),
    }


def engine_for(path: Path, **overrides: object) -> LLMEngine:
    settings: dict[str, object] = {"dtype": "float32", "kv_cache_memory_bytes": 4 << 20} | overrides
    return LLMEngine.from_model(path, EngineConfig(**settings))  # type: ignore[arg-type]


@pytest.mark.parametrize("kernels", [True, False], ids=["fused-cpu", "torch"])
@pytest.mark.parametrize("name", ["llama-hf", "llama-gguf", "qwen2-hf", "qwen2-gguf"])
def test_loaded_checkpoints_match_transformers_logprobs_and_greedy_tokens(
    name: str, kernels: bool, checkpoints: dict[str, Path]
) -> None:
    engine = engine_for(checkpoints[name], cpu_kernels=kernels)
    assert engine.model.ops.name == ("fused-cpu" if kernels else "torch")
    reference = tiny_model("qwen2" if name.startswith("qwen2") else "llama")
    batch = prompts([5, 19, 33], engine.model.config.vocab_size)
    params = SamplingParams(max_tokens=6, temperature=0, ignore_eos=True, logprobs=3)
    for i, prompt in enumerate(batch):
        engine.add_request(str(i), prompt, params)
    outputs = run(engine)
    for i, prompt in enumerate(batch):
        outs = outputs[(str(i), 0)]
        context = list(prompt)
        for out in outs:
            with torch.no_grad():
                expected = torch.log_softmax(reference(torch.tensor([context])).logits[0, -1].float(), -1)
            chosen = out.logprobs[0]
            assert chosen.token_id == int(expected.argmax())  # greedy token identical
            assert chosen.logprob == pytest.approx(float(expected[chosen.token_id]), abs=1e-4)
            for token_id, logprob in chosen.top_logprobs:
                assert logprob == pytest.approx(float(expected[token_id]), abs=1e-4)
            context.append(chosen.token_id)


@pytest.mark.parametrize("kernels", [True, False], ids=["fused-cpu", "torch"])
def test_batch_invariance_with_chunking_preemption_and_prefix_hits(
    kernels: bool, checkpoints: dict[str, Path]
) -> None:
    path = checkpoints["llama-hf"]
    alone_engine = engine_for(path, cpu_kernels=kernels)
    vocab = alone_engine.model.config.vocab_size
    shared = prompts([40], vocab, seed=7)[0]
    lengths = [3 + (i * 37) % 90 for i in range(31)]
    others = [shared + p if i % 3 == 0 else p for i, p in enumerate(prompts(lengths, vocab, seed=8))]
    probe = shared + prompts([11], vocab, seed=9)[0]
    params = SamplingParams(max_tokens=12, temperature=0, ignore_eos=True)

    alone_engine.add_request("probe", probe, params)
    alone = tokens(run(alone_engine)[("probe", 0)])

    # Small step budget (chunked prefill) and a KV cache too small for all 32: preemption happens.
    crowded = engine_for(
        path, max_num_batched_tokens=48, max_num_seqs=32, kv_cache_memory_bytes=360 << 10, cpu_kernels=kernels
    )
    for i, prompt in enumerate(others[:16]):
        crowded.add_request(f"o{i}", prompt, params)
    crowded.add_request("probe", probe, params)
    for i, prompt in enumerate(others[16:], start=16):
        crowded.add_request(f"o{i}", prompt, params)
    mixed = run(crowded)
    stats = crowded.stats()
    assert tokens(mixed[("probe", 0)]) == alone
    assert stats.num_preemptions > 0
    assert stats.prefix_cache_hits > 0
    # Each of the others also equals its own solo run.
    for i in (0, 5, 30):
        solo = engine_for(path, cpu_kernels=kernels)
        solo.add_request("x", others[i], params)
        assert tokens(run(solo)[("x", 0)]) == tokens(mixed[(f"o{i}", 0)])
    assert stats.num_blocks_used == 0


def test_seeded_sampling_is_reproducible_alone_and_batched(checkpoints: dict[str, Path]) -> None:
    engine = engine_for(checkpoints["llama-hf"])
    vocab = engine.model.config.vocab_size
    prompt = prompts([9], vocab, seed=3)[0]
    params = SamplingParams(max_tokens=10, temperature=1.0, top_p=0.9, seed=42, ignore_eos=True)
    engine.add_request("a", prompt, params)
    first = tokens(run(engine)[("a", 0)])
    for i, other in enumerate(prompts([4, 20, 13], vocab, seed=4)):
        engine.add_request(
            f"noise{i}", other, SamplingParams(max_tokens=10, temperature=1.0, ignore_eos=True)
        )
    engine.add_request("b", prompt, params)
    assert tokens(run(engine)[("b", 0)]) == first
    engine.add_request("c", prompt, SamplingParams(max_tokens=10, temperature=1.0, seed=43, ignore_eos=True))
    assert tokens(run(engine)[("c", 0)]) != first


def test_n_choices_fork_share_the_prompt_and_diverge(checkpoints: dict[str, Path]) -> None:
    engine = engine_for(checkpoints["llama-hf"])
    prompt = prompts([37], engine.model.config.vocab_size, seed=5)[0]
    engine.add_request(
        "n", prompt, SamplingParams(max_tokens=8, temperature=1.0, seed=1, n=3, ignore_eos=True)
    )
    outputs = run(engine)
    choices = [tokens(outputs[("n", i)]) for i in range(3)]
    assert all(len(c) == 8 for c in choices)
    assert len({tuple(c) for c in choices}) > 1
    assert all(outputs[("n", i)][-1].num_prompt_tokens == 37 for i in range(3))
    assert engine.stats().num_blocks_used == 0


def test_stop_strings_never_leak_and_end_the_request(checkpoints: dict[str, Path]) -> None:
    engine = engine_for(checkpoints["llama-hf"])
    prompt = prompts([6], engine.model.config.vocab_size, seed=11)[0]
    engine.add_request("free", prompt, SamplingParams(max_tokens=24, temperature=0, ignore_eos=True))
    full = text(run(engine)[("free", 0)])
    assert len(full) > 4
    stop = full[len(full) // 2 : len(full) // 2 + 2]
    engine.add_request(
        "stopped", prompt, SamplingParams(max_tokens=24, temperature=0, ignore_eos=True, stop=(stop,))
    )
    outs = run(engine)[("stopped", 0)]
    assert text(outs) == full[: full.index(stop)]
    assert outs[-1].finish_reason == "stop"


def test_abort_frees_every_block(checkpoints: dict[str, Path]) -> None:
    engine = engine_for(checkpoints["llama-hf"])
    for i, prompt in enumerate(prompts([50, 70, 20], engine.model.config.vocab_size)):
        engine.add_request(str(i), prompt, SamplingParams(max_tokens=40, temperature=0, ignore_eos=True))
    for _ in range(4):
        engine.step()
    assert engine.stats().num_blocks_used > 0
    assert engine.abort("0") and engine.abort("1") and engine.abort("2")
    assert not engine.abort("unknown")
    stats = engine.stats()
    assert (stats.num_blocks_used, stats.num_running, stats.num_waiting) == (0, 0, 0)
    assert not engine.has_unfinished_requests()


def test_max_tokens_and_length_finish(checkpoints: dict[str, Path]) -> None:
    engine = engine_for(checkpoints["llama-hf"])
    engine.add_request("r", [5, 6, 7], GREEDY)
    outs = run(engine)[("r", 0)]
    assert len(tokens(outs)) == 8
    assert outs[-1].finish_reason == "length" and outs[-1].num_output_tokens == 8
    assert all(not o.finished for o in outs[:-1])


@pytest.mark.parametrize(
    ("prompt", "params", "message"),
    [
        ([], GREEDY, "the prompt is empty"),
        ([10**9], GREEDY, "prompt token ids must be in"),
        ([5] * 250, SamplingParams(max_tokens=10), "exceeds the context length of 256 tokens"),
    ],
)
def test_invalid_requests_are_rejected_with_the_limit(
    checkpoints: dict[str, Path], prompt: list[int], params: SamplingParams, message: str
) -> None:
    engine = engine_for(checkpoints["llama-hf"])
    with pytest.raises(InvalidRequestError, match=message):
        engine.add_request("bad", prompt, params)
    assert not engine.has_unfinished_requests()


def test_duplicate_request_id_is_rejected(checkpoints: dict[str, Path]) -> None:
    engine = engine_for(checkpoints["llama-hf"])
    engine.add_request("same", [5, 6], GREEDY)
    with pytest.raises(InvalidRequestError, match="already in use"):
        engine.add_request("same", [5, 6], GREEDY)


@pytest.fixture(scope="module")
def default_engine() -> Iterator[LLMEngine]:
    yield LLMEngine.from_model("default", EngineConfig(dtype="float32", kv_cache_memory_bytes=64 << 20))


CHATS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [
        {"role": "system", "content": "You answer in one short sentence."},
        {"role": "user", "content": "Why is the sky blue?"},
    ],
    [
        {"role": "user", "content": "Write a haiku about autumn."},
        {"role": "assistant", "content": "Leaves fall softly down."},
        {"role": "user", "content": "Now one about winter."},
    ],
]


@pytest.mark.model
def test_default_model_greedy_equals_transformers_on_the_same_gguf(default_engine: LLMEngine) -> None:
    from transformers import AutoModelForCausalLM

    from backend.loader import resolve_model_path

    path = resolve_model_path("default")
    reference: Any = AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, dtype=torch.float32
    )
    reference.train(False)
    tokenizer = default_engine.tokenizer
    params = SamplingParams(max_tokens=32, temperature=0)
    expected: dict[str, list[int]] = {}
    for i, chat in enumerate(CHATS):
        prompt = tokenizer.encode(tokenizer.apply_chat_template(chat, add_generation_prompt=True))
        default_engine.add_request(f"chat{i}", prompt, params)
        with torch.no_grad():
            generated = reference.generate(
                torch.tensor([prompt]), max_new_tokens=32, do_sample=False, pad_token_id=2
            )
        expected[f"chat{i}"] = generated[0, len(prompt) :].tolist()
    outputs = run(default_engine)
    for i in range(len(CHATS)):
        assert tokens(outputs[(f"chat{i}", 0)]) == expected[f"chat{i}"]
