"""Prometheus text exposition of the worker's engine state (extended by the observability work)."""

from __future__ import annotations

from backend.async_engine import AsyncEngine


def render_metrics(engine: AsyncEngine) -> str:
    stats = engine.engine.stats()
    gauges = [
        ("warden_worker_kv_blocks_total", "KV cache blocks in the pool", stats.num_blocks_total),
        ("warden_worker_kv_blocks_used", "KV cache blocks held by requests", stats.num_blocks_used),
        ("warden_worker_requests_running", "Sequences being computed", stats.num_running),
        ("warden_worker_requests_waiting", "Requests waiting for admission", engine.num_waiting),
    ]
    counters = [
        ("warden_worker_preemptions_total", "Sequences preempted by recompute", stats.num_preemptions),
        ("warden_worker_prefix_cache_queries_tokens_total", "Prompt tokens looked up in the prefix cache",
         stats.prefix_cache_queries),
        ("warden_worker_prefix_cache_hits_tokens_total", "Prompt tokens served from the prefix cache",
         stats.prefix_cache_hits),
        ("warden_worker_engine_steps_total", "Engine steps run", engine.num_steps),
    ]  # fmt: skip
    lines: list[str] = []
    for kind, metrics in (("gauge", gauges), ("counter", counters)):
        for name, help_text, value in metrics:
            lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}", f"{name} {value}"]
    return "\n".join(lines) + "\n"
