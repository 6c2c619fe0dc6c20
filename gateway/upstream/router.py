"""Model name → the pool of workers that serves it.

Exact names win over patterns; among patterns the first configured pool wins, so the order of
``upstreams`` in the settings is the routing order. Pools with patterns learn the concrete model
names from their workers' ``/v1/models`` during health checks, for ``GET /v1/models``.
"""

from __future__ import annotations

from fnmatch import fnmatchcase

from gateway.upstream.pool import WorkerPool, is_model_pattern


class Router:
    def __init__(self, pools: list[WorkerPool]) -> None:
        self.pools = pools
        self._exact = {m: p for p in reversed(pools) for m in p.settings.models if not is_model_pattern(m)}

    def pool_for(self, model: str) -> WorkerPool | None:
        pool = self._exact.get(model)
        if pool is not None:
            return pool
        for candidate in self.pools:
            if any(is_model_pattern(p) and fnmatchcase(model, p) for p in candidate.settings.models):
                return candidate
        return None

    def model_names(self) -> list[str]:
        """Every concrete model name some pool can serve right now, sorted."""
        names = set(self._exact)
        for pool in self.pools:
            for worker in pool.workers:
                names.update(m for m in worker.models if self.pool_for(m) is pool)
        return sorted(names)
