"""The worker over HTTP + mTLS against the same workload through the engine directly, side by side.

python -m bench.worker_serving [--quick] [--json PATH]

Requests arrive as a Poisson process (fixed seed) at several rates, and all at once ("burst").
Each streams its completion (SSE) over a keep-alive mTLS connection from an asyncio client in
this process; "direct" feeds the identical arrivals to ``AsyncEngine`` in this process, without
HTTP, TLS or JSON. The two alternate per rate, and every run has its own cache salt.
Both generate exactly each request's output length (``ignore_eos``).
Throughput = output tokens / (last completion - first arrival). The client shares the machine's
two cores with the worker, so its own parsing is part of the measured cost.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import random
import ssl
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx

from backend.async_engine import AsyncEngine
from backend.engine.llm_engine import EngineConfig, LLMEngine
from backend.engine.sampling_params import SamplingParams
from bench._common import format_table, pass_fail, percentile
from bench._workload import Request, WorkloadShape, build_workload, token_stream
from gateway.pki import init_pki
from gateway.tls import TlsFiles, client_context
from tests.support.ports import free_port
from tests.support.processes import ServiceProcess

KV_MB = 512
TARGET_OVERHEAD = 0.10


@dataclass(frozen=True, slots=True)
class Mode:
    shape: WorkloadShape
    rates: tuple[float, ...]  # requests per second; inf = all at once


FULL = Mode(
    WorkloadShape(num_requests=48, prompt_len=(32, 256), output_len=(32, 128)), (2.0, 4.0, float("inf"))
)
QUICK = Mode(WorkloadShape(num_requests=16, prompt_len=(32, 256), output_len=(16, 64)), (4.0, float("inf")))


@dataclass(frozen=True, slots=True)
class RunResult:
    output_tok_s: float
    ttft_p50_ms: float
    ttft_p99_ms: float
    itl_p50_ms: float
    itl_p99_ms: float


# One request: (request, arrival offset) -> token timestamps relative to the run start.
Submit = Callable[[Request, float], Awaitable[list[float]]]


def arrivals(count: int, rate: float, seed: int = 1) -> list[float]:
    if rate == float("inf"):
        return [0.0] * count
    rng = random.Random(seed)
    t, out = 0.0, []
    for _ in range(count):
        out.append(t)
        t += rng.expovariate(rate)
    return out


async def run_workload(requests: list[Request], offsets: list[float], submit: Submit) -> RunResult:
    started = time.perf_counter()

    async def one(request: Request, offset: float) -> tuple[float, list[float]]:
        await asyncio.sleep(max(0.0, offset - (time.perf_counter() - started)))
        return offset, await submit(request, started)

    results = await asyncio.gather(*(one(r, o) for r, o in zip(requests, offsets, strict=True)))
    wall = max(times[-1] for _, times in results if times) - min(offsets)
    ttfts = [(times[0] - offset) * 1000 for offset, times in results if times]
    gaps = [(b - a) * 1000 for _, times in results for a, b in itertools.pairwise(times)]
    tokens = sum(len(times) for _, times in results)
    return RunResult(
        output_tok_s=tokens / wall,
        ttft_p50_ms=percentile(ttfts, 50),
        ttft_p99_ms=percentile(ttfts, 99),
        itl_p50_ms=percentile(gaps, 50) if gaps else 0.0,
        itl_p99_ms=percentile(gaps, 99) if gaps else 0.0,
    )


def params_for(request: Request) -> SamplingParams:
    return SamplingParams(max_tokens=request.output_len, temperature=0, ignore_eos=True)


def direct_submit(engine: AsyncEngine, salt: str) -> Submit:
    async def submit(request: Request, started: float) -> list[float]:
        times: list[float] = []
        request_id = f"{salt}-{request.request_id}"
        stream = engine.generate(request_id, request.prompt_token_ids, params_for(request), cache_salt=salt)
        async for out in stream:
            times.extend(time.perf_counter() - started for _ in out.new_token_ids)
        return times

    return submit


def http_submit(client: httpx.AsyncClient, url: str, salt: str) -> Submit:
    async def submit(request: Request, started: float) -> list[float]:
        body = {
            "model": "bench", "prompt": request.prompt_token_ids, "max_tokens": request.output_len,
            "temperature": 0, "ignore_eos": True, "stream": True, "cache_salt": salt,
        }  # fmt: skip
        times: list[float] = []
        async with client.stream("POST", f"{url}/v1/completions", json=body) as response:
            response.raise_for_status()
            async for line in response.aiter_lines():
                if line.startswith("data: {"):
                    times.append(time.perf_counter() - started)
        return times

    return submit


def engine_config() -> EngineConfig:
    return EngineConfig(dtype="bfloat16", kv_cache_memory_bytes=KV_MB << 20, max_num_seqs=64)


async def measure(
    requests: list[Request], rates: tuple[float, ...], url: str, context: ssl.SSLContext
) -> tuple[dict[str, RunResult], dict[str, RunResult]]:
    """Direct and HTTP runs alternate per rate, so drift on a shared machine hits both alike.

    Every run has its own cache salt: no run is served from another run's prefix cache.
    """
    engine = AsyncEngine(LLMEngine.from_model("default", engine_config()), max_waiting=10_000)
    engine.start()
    limits = httpx.Limits(max_connections=len(requests), max_keepalive_connections=len(requests))
    direct: dict[str, RunResult] = {}
    served: dict[str, RunResult] = {}
    try:
        async with httpx.AsyncClient(verify=context, timeout=600, limits=limits) as client:
            warm = requests[:2], [0.0, 0.0]
            await run_workload(*warm, direct_submit(engine, "warmup"))
            await run_workload(*warm, http_submit(client, url, "warmup"))  # and the TLS handshakes
            for rate in rates:
                offsets = arrivals(len(requests), rate)
                direct[str(rate)] = await run_workload(requests, offsets, direct_submit(engine, f"d{rate}"))
                served[str(rate)] = await run_workload(
                    requests, offsets, http_submit(client, url, f"h{rate}")
                )
    finally:
        await engine.stop(1)
    return direct, served


def start_worker(root: Path) -> tuple[ServiceProcess, str, ssl.SSLContext]:
    paths, _ = init_pki(root / "pki")
    port = free_port()
    worker = ServiceProcess.python_module(
        "backend", "serve", "--port", str(port), "--served-model-name", "bench", "--dtype", "bfloat16",
        "--kv-cache-memory", str(KV_MB), "--max-num-seqs", "64", "--max-waiting", "10000",
        "--tls-cert", str(paths.worker_cert), "--tls-key", str(paths.worker_key),
        "--tls-ca", str(paths.ca_cert), log_path=root / "worker.log",
    ).start()  # fmt: skip
    context = client_context(TlsFiles(ca=paths.ca_cert, cert=paths.gateway_cert, key=paths.gateway_key))
    url = f"https://localhost:{port}"
    worker.wait_until(lambda: httpx.get(f"{url}/health", verify=context, timeout=2).status_code == 200, 120)
    return worker, url, context


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    mode = QUICK if args.quick else FULL
    tokenizer_engine = LLMEngine.from_model("default", EngineConfig(kv_cache_memory_bytes=1 << 20))
    requests = build_workload(token_stream(tokenizer_engine.tokenizer.encode, 20_000), mode.shape)
    del tokenizer_engine

    with tempfile.TemporaryDirectory() as tmp:
        worker, url, context = start_worker(Path(tmp))
        try:
            direct, served = asyncio.run(measure(requests, mode.rates, url, context))
        finally:
            worker.stop()

    rows = []
    worst = float("-inf")
    for rate in map(str, mode.rates):
        d, h = direct[rate], served[rate]
        overhead = 1 - h.output_tok_s / d.output_tok_s
        worst = max(worst, overhead)
        label = "burst" if rate == "inf" else f"{float(rate):g} req/s"
        for name, r in (("direct", d), ("http+mtls", h)):
            rows.append(
                [
                    f"{label} {name}",
                    f"{r.output_tok_s:.1f}",
                    f"{r.ttft_p50_ms:.0f}",
                    f"{r.ttft_p99_ms:.0f}",
                    f"{r.itl_p50_ms:.1f}",
                    f"{r.itl_p99_ms:.1f}",
                    f"{overhead:+.1%}" if name != "direct" else "",
                ]
            )
    shape = mode.shape
    print(
        f"{shape.num_requests} requests, prompts {shape.prompt_len[0]}-{shape.prompt_len[1]}, outputs "
        f"{shape.output_len[0]}-{shape.output_len[1]} tokens, bf16, streaming\n"
    )
    print(format_table(["run", "tok/s", "TTFT p50", "TTFT p99", "ITL p50", "ITL p99", "HTTP cost"], rows))
    print(
        f"\nworst HTTP + mTLS cost: {worst:.1%} of the engine's throughput "
        f"(target <= {TARGET_OVERHEAD:.0%}: {pass_fail(worst <= TARGET_OVERHEAD)})"
    )
    if args.json:
        results = {
            "direct": {k: asdict(v) for k, v in direct.items()},
            "http_mtls": {k: asdict(v) for k, v in served.items()},
            "worst_overhead": worst,
        }
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
