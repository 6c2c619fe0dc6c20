"""``create_app(settings)``: the gateway's routes, middleware and lifespan in one place."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from gateway.errors import install_error_handlers
from gateway.settings import GatewaySettings
from gateway.upstream.pool import WorkerPool


def create_app(settings: GatewaySettings) -> Starlette:
    pools: list[WorkerPool] = []

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        pools.extend(WorkerPool(upstream) for upstream in settings.upstreams)
        try:
            yield
        finally:
            for pool in pools:
                await pool.aclose()

    async def healthz(_request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    async def readyz(_request: Request) -> JSONResponse:
        upstreams = []
        ready = True
        for pool in pools:
            workers = await pool.probe()
            healthy = any(w.healthy for w in workers)
            ready = ready and healthy
            upstreams.append(
                {
                    "name": pool.settings.name,
                    "healthy": healthy,
                    "workers": [{"url": w.url, "healthy": w.healthy, "detail": w.detail} for w in workers],
                }
            )
        body = {"status": "ready" if ready else "not_ready", "upstreams": upstreams}
        return JSONResponse(body, status_code=200 if ready else 503)

    app = Starlette(
        routes=[Route("/healthz", healthz), Route("/readyz", readyz)],
        lifespan=lifespan,
    )
    install_error_handlers(app)
    return app
