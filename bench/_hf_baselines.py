"""The Hugging Face transformers baselines: continuous batching and static batched ``generate``.

Both run the same bf16 weights (the GGUF, dequantized by transformers' loader) on the same workload,
greedy, each request generating exactly its own output length: EOS neither stops a request nor is
masked, the same semantics as ``ignore_eos`` in the engine.

Continuous batching goes through ``continuous_batching_context_manager``, the manager that
``generate_batch`` wraps, because ``generate_batch`` takes one ``max_new_tokens`` for every input and
the workload needs one per request. Its cache is sized explicitly (``num_blocks``, ``max_batch_tokens``);
left unset, transformers sizes it from 60% of the host's RAM.
"""

from __future__ import annotations

import contextlib
import io
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import transformers
from transformers import AutoModelForCausalLM, ContinuousBatchingConfig, GenerationConfig
from transformers.generation.continuous_batching.utils import WorkloadHints

from bench._workload import Request


@dataclass(frozen=True, slots=True)
class BaselineRun:
    wall_s: float
    output_token_ids: dict[str, list[int]]

    @property
    def output_tokens(self) -> int:
        return sum(len(ids) for ids in self.output_token_ids.values())


@dataclass(frozen=True, slots=True)
class ContinuousSettings:
    kv_cache_bytes: int  # the same KV budget the engine gets
    page_size: int  # tokens per cache page (transformers' block size)
    max_batch_tokens: int  # per-step token budget, as the engine's max_num_batched_tokens
    max_requests_per_batch: int  # as the engine's max_num_seqs


def load_model(gguf_path: Path) -> Any:
    """The model in bf16. transformers' GGUF loader dequantizes Llama weights into dense layers."""
    # Its advice to keep GGUF weights packed in float32 does not apply: Llama weights are dequantized.
    transformers.logging.set_verbosity_error()  # type: ignore[no-untyped-call]
    transformers.logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    # The GGUF loader draws a progress bar on stderr that no transformers setting turns off.
    with contextlib.redirect_stderr(io.StringIO()):
        model: Any = AutoModelForCausalLM.from_pretrained(
            gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.bfloat16
        )
    model.eval()
    # generate() fills unset options from the model's own config; without this it would stop at EOS.
    model.generation_config.eos_token_id = None
    return model


def kv_bytes_per_token(model: Any) -> int:
    config: Any = model.config
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    element = torch.finfo(model.dtype).bits // 8
    return int(2 * config.num_hidden_layers * config.num_key_value_heads * head_dim * element)


def _check_lengths(requests: list[Request], outputs: dict[str, list[int]], system: str) -> None:
    for r in requests:
        got = len(outputs.get(r.request_id, []))
        if got != r.output_len:
            raise RuntimeError(f"{system}: {r.request_id} generated {got} tokens, expected {r.output_len}")


@contextlib.contextmanager
def _continuous_manager(model: Any, requests: list[Request], settings: ContinuousSettings) -> Iterator[Any]:
    num_blocks = settings.kv_cache_bytes // (kv_bytes_per_token(model) * settings.page_size)
    # Without num_blocks and max_batch_tokens, transformers sizes its cache from 60% of the host's RAM.
    config = ContinuousBatchingConfig(
        page_size=settings.page_size,
        num_blocks=num_blocks,
        max_batch_tokens=settings.max_batch_tokens,
        max_requests_per_batch=settings.max_requests_per_batch,
        scheduler_type="fifo",
    )
    hints = WorkloadHints(
        max_prompt_length=max(len(r.prompt_token_ids) for r in requests),
        max_generated_length=max(r.output_len for r in requests),
        num_requests=len(requests),
    )
    generation = GenerationConfig(  # type: ignore[no-untyped-call]
        do_sample=False, eos_token_id=-1, pad_token_id=model.config.pad_token_id
    )
    with model.continuous_batching_context_manager(
        generation_config=generation,
        continuous_batching_config=config,
        block=True,
        timeout=5,
        workload_hints=hints,
    ) as manager:
        yield manager


def _drain(manager: Any, requests: list[Request]) -> dict[str, list[int]]:
    """Submit every request at once, then collect the finished ones (as ``generate_batch`` does)."""
    for r in requests:
        # generate_batch() takes one max_new_tokens for all inputs; add_request() takes one per request.
        manager.add_request(
            r.prompt_token_ids, request_id=r.request_id, max_new_tokens=r.output_len, eos_token_id=-1
        )
    outputs: dict[str, list[int]] = {}
    while len(outputs) < len(requests):
        result = manager.get_result(timeout=1)
        if result is None:
            if not manager.is_running():
                raise RuntimeError("transformers' continuous batching loop stopped early")
            continue
        if result.error is not None:
            raise RuntimeError(f"transformers continuous batching: {result.request_id}: {result.error}")
        if result.is_finished():
            outputs[result.request_id] = list(result.generated_tokens)
    return outputs


def run_continuous(
    model: Any, requests: list[Request], warmup: list[Request], settings: ContinuousSettings
) -> BaselineRun:
    """transformers' continuous batching (paged KV cache, FIFO scheduler), all requests queued at t=0.

    Called outside ``torch.inference_mode()``: the generation loop runs on its own thread under no_grad.
    """
    with _continuous_manager(model, requests, settings) as manager:
        _drain(manager, warmup)
        started = time.perf_counter()
        outputs = _drain(manager, requests)
        wall = time.perf_counter() - started
    _check_lengths(requests, outputs, "hf_continuous")
    return BaselineRun(wall, outputs)


def _generate_batch(model: Any, batch: list[Request]) -> dict[str, list[int]]:
    """One left-padded batch, generated to its longest member's output length."""
    pad = model.config.pad_token_id
    width = max(len(r.prompt_token_ids) for r in batch)
    input_ids = torch.full((len(batch), width), pad, dtype=torch.long)
    attention_mask = torch.zeros_like(input_ids)
    for row, r in enumerate(batch):
        input_ids[row, width - len(r.prompt_token_ids) :] = torch.tensor(r.prompt_token_ids)
        attention_mask[row, width - len(r.prompt_token_ids) :] = 1
    new_tokens = max(r.output_len for r in batch)
    generation = GenerationConfig(  # type: ignore[no-untyped-call]
        do_sample=False, max_new_tokens=new_tokens, pad_token_id=pad
    )
    out = model.generate(input_ids=input_ids, attention_mask=attention_mask, generation_config=generation)
    # Each request keeps only its own output length; the rest of its row is discarded, not counted.
    return {r.request_id: out[row, width : width + r.output_len].tolist() for row, r in enumerate(batch)}


def run_static(model: Any, requests: list[Request], warmup: list[Request], batch_size: int) -> BaselineRun:
    """Static batched ``generate``: requests sorted by output length (longest first), cut into batches.

    Sorting by output length is the fairest static batching can be with exact-length requests: every
    batch runs to its longest member, so grouping similar lengths wastes the fewest decode steps.
    Only each request's own tokens count toward throughput.
    """
    ordered = sorted(requests, key=lambda r: r.output_len, reverse=True)
    batches = [ordered[i : i + batch_size] for i in range(0, len(ordered), batch_size)]
    outputs: dict[str, list[int]] = {}
    with torch.inference_mode():
        _generate_batch(model, warmup)
        started = time.perf_counter()
        for batch in batches:
            outputs.update(_generate_batch(model, batch))
        wall = time.perf_counter() - started
    _check_lengths(requests, outputs, "hf_static")
    return BaselineRun(wall, outputs)
