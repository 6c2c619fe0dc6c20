"""The engine part of `make demo`: the bundled model answering locally, then a batch of requests."""

from __future__ import annotations

import sys
import time

from backend.engine.llm_engine import EngineConfig, LLMEngine
from backend.engine.sampling_params import SamplingParams

QUESTIONS = [
    "What is the capital of France?",
    "Name three primary colors.",
    "What is 12 times 12?",
    "Give one tip for writing clear emails.",
    "What is photosynthesis in one sentence?",
    "Which planet is known as the red planet?",
    "Translate 'good morning' into Spanish.",
    "What does a compiler do?",
]
SYSTEM = "You are a concise assistant for a security team. Answer in one short sentence."


def row(label: str, value: str) -> None:
    print(f"  {label:<28} {value}")


def run_engine_demo() -> None:
    print("\n== Inference engine (SmolLM2-135M-Instruct, GGUF Q4_1, paged KV cache, continuous batching)")
    started = time.perf_counter()
    engine = LLMEngine.from_model("default", EngineConfig(kv_cache_memory_bytes=256 << 20))
    row(
        "model loaded in",
        f"{time.perf_counter() - started:.1f} s ({engine.model.dtype}, {engine.kv_capacity_tokens} KV slots)",
    )
    tokenizer = engine.tokenizer

    def prompt(question: str) -> list[int]:
        chat = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}]
        return tokenizer.encode(tokenizer.apply_chat_template(chat, add_generation_prompt=True))

    # One streamed answer.
    engine.add_request("stream", prompt(QUESTIONS[0]), SamplingParams(max_tokens=48, temperature=0))
    print(f"  Q: {QUESTIONS[0]}\n  A: ", end="")
    t0, first = time.perf_counter(), None
    while engine.has_unfinished_requests():
        for out in engine.step():
            first = first or time.perf_counter()
            sys.stdout.write(out.text_delta)
            sys.stdout.flush()
    print()
    row("time to first token", f"{((first or t0) - t0) * 1000:.0f} ms")

    # A batch sharing the system prompt: continuous batching and the prefix cache at work.
    before = engine.stats()
    t0 = time.perf_counter()
    for i, question in enumerate(QUESTIONS[1:]):
        engine.add_request(f"q{i}", prompt(question), SamplingParams(max_tokens=48, temperature=0))
    answers: dict[str, str] = {}
    generated = 0
    while engine.has_unfinished_requests():
        for out in engine.step():
            answers[out.request_id] = answers.get(out.request_id, "") + out.text_delta
            generated += len(out.new_token_ids)
    elapsed = time.perf_counter() - t0
    stats = engine.stats()
    for i, question in enumerate(QUESTIONS[1:4]):
        print(f"  Q: {question}\n  A: {answers[f'q{i}'].strip()}")
    hits = stats.prefix_cache_hits - before.prefix_cache_hits
    queried = stats.prefix_cache_queries - before.prefix_cache_queries
    row("batch of 7 requests", f"{generated} tokens in {elapsed:.1f} s = {generated / elapsed:.0f} tokens/s")
    row("prefix cache", f"{hits} of {queried} prompt tokens reused (shared system prompt)")
    row("KV blocks in use afterwards", f"{stats.num_blocks_used} of {stats.num_blocks_total}")
