"""What the worker's metrics and health checks read from a loaded engine, without loading the model.

The deploy tests run the images' health checks and the pods' probes against the worker's real
metrics code; only the engine under it is this stand-in, since those tests check the probes, not
the engine.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import TYPE_CHECKING, cast

if TYPE_CHECKING:
    from backend.async_engine import AsyncEngine


def loaded_engine(*, blocks_used: int = 0, running: int = 0, steps: int = 0) -> AsyncEngine:
    """An engine with 64 KV blocks whose stats say it has loaded its model."""
    stats = SimpleNamespace(
        num_blocks_total=64,
        num_blocks_used=blocks_used,
        num_running=running,
        prefix_cache_hit_rate=0.0,
        num_preemptions=0,
        prefix_cache_queries=0,
        prefix_cache_hits=0,
    )
    model = SimpleNamespace(
        dtype="torch.bfloat16", device=SimpleNamespace(type="cpu"), ops=SimpleNamespace(name="torch")
    )
    return cast(
        "AsyncEngine",
        SimpleNamespace(
            engine=SimpleNamespace(stats=lambda: stats, model=model), num_waiting=0, num_steps=steps
        ),
    )
