"""The worker part of `make demo`: the bundled model answering over mTLS through the openai SDK."""

from __future__ import annotations

import asyncio
import ssl
import sys
import time

import httpx
from openai import AsyncOpenAI, DefaultAsyncHttpxClient, DefaultHttpxClient, OpenAI
from openai.types.chat import ChatCompletionMessageParam
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

QUESTIONS = [
    "What is the capital of France?",
    "Name three primary colors.",
    "Give one tip for writing clear emails.",
    "What is photosynthesis in one sentence?",
    "Which planet is known as the red planet?",
    "Translate 'good morning' into Spanish.",
    "What does a compiler do?",
    "What is the boiling point of water in Celsius?",
]
SYSTEM = "You are a concise assistant for a security team. Answer in one short sentence."


def row(label: str, value: str) -> None:
    print(f"  {label:<28} {value}")


def chat(question: str) -> list[ChatCompletionMessageParam]:
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}]


def worker_samples(metrics_url: str) -> list[Sample]:
    """Every sample of the worker's metrics port (plain HTTP, kept off the mTLS port)."""
    text = httpx.get(metrics_url, timeout=5).text
    return [sample for family in text_string_to_metric_families(text) for sample in family.samples]


def worker_metrics(metrics_url: str) -> dict[str, float]:
    """The unlabelled samples by name."""
    return {sample.name: sample.value for sample in worker_samples(metrics_url) if not sample.labels}


def engine_description(metrics_url: str) -> str:
    """How the worker computes, from its ``engine_info`` metric: dtype and layer ops."""
    for sample in worker_samples(metrics_url):
        if sample.name == "warden_worker_engine_info":
            labels = sample.labels
            ops = "fused C++ CPU kernels" if labels["layer_ops"] == "fused-cpu" else "plain torch ops"
            return f"{labels['dtype']} on {labels['device']}, {ops}"
    return "engine not reported"


def run_worker_demo(worker_url: str, context: ssl.SSLContext, metrics_url: str) -> None:
    print("\n== The worker answers over mTLS (openai SDK with the gateway's client certificate)")
    client = OpenAI(
        base_url=f"{worker_url}/v1", api_key="unused", http_client=DefaultHttpxClient(verify=context)
    )
    model = client.models.list().data[0].id
    row("model", f"{model} (GGUF Q4_1, paged KV cache, continuous batching)")
    print(f"  Q: {QUESTIONS[0]}\n  A: ", end="")
    started, first, last, tokens = time.perf_counter(), None, 0.0, 0
    for chunk in client.chat.completions.create(
        model=model, messages=chat(QUESTIONS[0]), max_tokens=48, temperature=0, stream=True
    ):
        if chunk.choices and chunk.choices[0].delta.content:
            last, tokens = time.perf_counter(), tokens + 1  # one token per chunk (bar split characters)
            first = first or last
            sys.stdout.write(chunk.choices[0].delta.content)
            sys.stdout.flush()
    print()
    row("time to first token", f"{((first or started) - started) * 1000:.0f} ms (streamed as SSE)")
    if first is not None and tokens > 1:
        rate = (tokens - 1) / (last - first)
        row("one stream's decode speed", f"{rate:.0f} tokens/s ({engine_description(metrics_url)})")

    before = worker_metrics(metrics_url)

    async def batch() -> list[tuple[str, int]]:
        http = DefaultAsyncHttpxClient(verify=context)
        aclient = AsyncOpenAI(base_url=f"{worker_url}/v1", api_key="unused", http_client=http)

        async def one(question: str) -> tuple[str, int]:
            reply = await aclient.chat.completions.create(
                model=model, messages=chat(question), max_tokens=48, temperature=0
            )
            tokens = reply.usage.completion_tokens if reply.usage else 0
            return (reply.choices[0].message.content or "").strip(), tokens

        try:
            return await asyncio.gather(*(one(q) for q in QUESTIONS[1:]))
        finally:
            await http.aclose()

    started = time.perf_counter()
    answers = asyncio.run(batch())
    elapsed = time.perf_counter() - started
    for question, (answer, _) in zip(QUESTIONS[1:4], answers, strict=False):
        print(f"  Q: {question}\n  A: {answer}")
    generated = sum(tokens for _, tokens in answers)
    after = worker_metrics(metrics_url)
    hits = (
        after["warden_worker_prefix_cache_hits_tokens_total"]
        - before["warden_worker_prefix_cache_hits_tokens_total"]
    )
    queried = (
        after["warden_worker_prefix_cache_queries_tokens_total"]
        - before["warden_worker_prefix_cache_queries_tokens_total"]
    )
    row(
        f"{len(answers)} concurrent requests",
        f"{generated} tokens in {elapsed:.1f} s = {generated / elapsed:.0f} tokens/s",
    )
    row("prefix cache", f"{hits:.0f} of {queried:.0f} prompt tokens reused (shared system prompt)")
    row(
        "KV blocks in use afterwards",
        f"{after['warden_worker_kv_blocks_used']:.0f} of {after['warden_worker_kv_blocks_total']:.0f}",
    )
