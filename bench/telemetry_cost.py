"""What telemetry costs the gateway per request, in its own process: CPU µs, side by side.

python -m bench.telemetry_cost [--quick] [--requests N] [--json PATH]

The finish step's telemetry for a request that ran every pipeline step, measured in process:
  none      the request context's own bookkeeping (step timestamps) and an unsampled trace;
  metrics   + the Prometheus updates (requests, latency, ten step histograms, tokens);
  traces    + a sampled trace: eleven span records handed to the exporter process;
  both      metrics and traces, as a traced gateway runs.
The exporter process exports to a local OTLP/HTTP receiver (bench._otlp_sink), whose span count
is checked at the end. End-to-end throughput with telemetry on and off is in
bench/gateway_overhead.py; this isolates the work on the gateway's own core.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ALWAYS_ON

from bench._common import format_table
from gateway.metrics import GatewayMetrics
from gateway.request_context import RequestContext, Step, Usage
from gateway.span_export import ExporterProcess
from gateway.telemetry import RequestTelemetry
from gateway.tracing import RequestTrace, Tracing
from tests.support.ports import free_port
from tests.support.processes import ServiceProcess

STEPS = ("read_request", "authenticate", "authorize", "prompt_guard", "prompt_redaction", "budget", "cache",
         "output_redaction", "audit")  # fmt: skip


def request(tracing: Tracing | None) -> RequestContext:
    """A finished request as the finish step sees it: every step ran, the worker answered."""
    trace = RequestTrace.begin(tracing, "POST /v1/chat/completions", None)
    start = time.time_ns()
    ctx = RequestContext(
        request_id="0123456789abcdef01234567", trace=trace, endpoint="chat.completions",
        started=time.perf_counter(), model="smollm2", upstream="local", upstream_started_ns=start,
        worker="https://worker-0:8000", usage=Usage(40, 16),
    )  # fmt: skip
    ctx.steps = [Step(name, start + i * 1000, start + i * 1000 + 800) for i, name in enumerate(STEPS)]
    ctx.guard_scores["injection"] = 0.01
    return ctx


def per_request_us(observe: Callable[[RequestContext], None], tracing: Tracing | None, n: int) -> float:
    contexts = [request(tracing) for _ in range(n)]
    started = time.perf_counter()
    for ctx in contexts:
        observe(ctx)
    return (time.perf_counter() - started) / n * 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.telemetry_cost", description=__doc__)
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--quick", action="store_true", help="5,000 requests per variant")
    parser.add_argument("--json", type=Path, help="write the best µs per request of each variant here")
    args = parser.parse_args(argv)
    n = 5_000 if args.quick else args.requests
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        with ServiceProcess.python_module(
            "bench._otlp_sink", "--port", str(port), log_path=Path(tmp) / "sink.log"
        ) as sink:
            sink.wait_http(f"http://127.0.0.1:{port}/health", timeout_s=30)
            os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"] = f"http://127.0.0.1:{port}"
            exporter = ExporterProcess("bench-gateway", "otlp")
            traced, untraced = Tracing(exporter, ALWAYS_ON), Tracing(exporter, ALWAYS_OFF)
            metrics = GatewayMetrics()
            variants = {
                "none": (RequestTelemetry(None, untraced), untraced),
                "metrics": (RequestTelemetry(metrics, untraced), untraced),
                "traces": (RequestTelemetry(None, traced), traced),
                "both": (RequestTelemetry(metrics, traced), traced),
            }
            results: dict[str, list[float]] = {name: [] for name in variants}
            for _ in range(3):  # interleaved rounds; the best of each is kept
                for name, (telemetry, tracing) in variants.items():
                    observe = _observer(telemetry)
                    results[name].append(per_request_us(observe, tracing, n))
                    time.sleep(0.5)  # let the exporter process drain between variants
            exporter.shutdown()
            exporter._process.wait(30)
            received = httpx.get(f"http://127.0.0.1:{port}/stats", timeout=5).json()
    best = {name: min(values) for name, values in results.items()}
    rows = [[name, f"{best[name]:.1f}", f"{best[name] - best['none']:+.1f}"] for name in variants]
    print(f"telemetry at the finish step, {n} requests per variant, best of 3 (CPU µs per request)\n")
    print(format_table(["variant", "µs/request", "added µs"], rows))
    sent, dropped = exporter.sent, exporter.dropped
    if args.json:
        args.json.write_text(json.dumps({"requests": n, "us_per_request": best}, indent=2) + "\n")
    spans = received["spans"]
    print(f"\ntraces handed off: {sent}, dropped (exporter behind): {dropped}; spans received: {spans}")
    return 0 if received["spans"] > 0 else 1


def _observer(telemetry: RequestTelemetry) -> Callable[[RequestContext], None]:
    return lambda ctx: telemetry.observe(ctx, 200, None, "allow")


if __name__ == "__main__":
    raise SystemExit(main())
