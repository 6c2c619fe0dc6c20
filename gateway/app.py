"""``create_app(settings)``: the gateway's routes, middleware and lifespan in one place."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
from collections.abc import AsyncIterator
from wsgiref.simple_server import WSGIServer

from prometheus_client import CONTENT_TYPE_LATEST, start_http_server
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gateway.audit import AuditWriter
from gateway.auth import Authenticator
from gateway.cache import ResponseCache
from gateway.config import ConfigError
from gateway.errors import install_error_handlers
from gateway.finish import Finisher
from gateway.guards.injection import InjectionScanner
from gateway.guards.pii import PiiAnalyzer
from gateway.limits import Limiter
from gateway.metrics import GatewayMetrics
from gateway.openapi import openapi_document
from gateway.pipeline import Services, completion_route, models_route
from gateway.policy.store import PolicyError, PolicyStore
from gateway.redis_state import RedisState
from gateway.settings import GatewaySettings
from gateway.telemetry import RequestTelemetry
from gateway.tracing import Tracing, package_version
from gateway.upstream.pool import WorkerPool
from gateway.upstream.router import Router

logger = logging.getLogger(__name__)


def create_app(settings: GatewaySettings, *, tracing: Tracing | None = None) -> Starlette:
    """The gateway app. An invalid policy directory is a ``ConfigError``: it never starts without one.

    ``tracing`` (from ``tracing_from_env``, or a test's in-memory exporter) records each request's
    spans; without it nothing is traced. Metrics are always kept."""
    try:
        policies = PolicyStore(settings.policy_dir)
    except PolicyError as exc:
        raise ConfigError(f"policy_dir {settings.policy_dir}: {exc}") from None
    redis = RedisState(settings.redis)
    cache = ResponseCache(redis, settings.cache)
    limiter = Limiter(redis)
    audit = AuditWriter(settings.audit) if settings.audit.enabled else None
    metrics = GatewayMetrics()
    services = Services(
        settings=settings,
        authenticator=Authenticator(settings.auth),
        policies=policies,
        router=Router([WorkerPool(upstream) for upstream in settings.upstreams]),
        cache=cache,
        limiter=limiter,
        finish=Finisher(cache, limiter, audit, settings.audit, request_telemetry(settings, metrics, tracing)),
        pii=PiiAnalyzer(settings.guards.pii),
        scanner=load_scanner(settings),
        tracing=tracing,
    )
    metrics.watch(services)

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        await services.authenticator.start()
        await redis.start()
        if audit is not None:
            await audit.start()
        else:
            logger.warning("audit log disabled: set audit.directory and its keys to record every request")
        tasks = [asyncio.create_task(pool.run_health_checks()) for pool in services.router.pools]
        tasks.append(asyncio.create_task(policies.watch(settings.policy_reload_interval_s)))
        reload_on_sighup(policies)
        scrape_port = start_metrics_port(settings, metrics)
        try:
            yield
        finally:
            if scrape_port is not None:
                scrape_port.shutdown()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for pool in services.router.pools:
                await pool.aclose()
            await services.authenticator.aclose()
            await redis.close()
            if audit is not None:
                await audit.close()
            services.pii.close()
            if tracing is not None:
                await asyncio.to_thread(tracing.shutdown)  # flushes what is batched

    async def healthz(_request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    async def readyz(_request: Request) -> JSONResponse:
        upstreams = []
        ready = True
        for pool in services.router.pools:
            workers = await pool.check_health()
            pool_ready = pool.is_ready()
            ready = ready and pool_ready
            upstreams.append(
                {
                    "name": pool.settings.name,
                    "healthy": pool_ready,
                    "tls": pool.tls.status(),  # reloads of the worker link's certificates, last error
                    "workers": [
                        {"url": w.url, "healthy": w.healthy, "detail": w.detail, "circuit": w.circuit}
                        for w in workers
                    ],
                }
            )
        current = policies.current
        policy = {
            "version": current.version,
            "files": list(current.files),
            "last_error": policies.last_error,
            "reloads_ok": policies.reloads_ok,
            "reloads_failed": policies.reloads_failed,
        }
        # Redis down is degraded but serving; an audit log that cannot record fails every request.
        audit_up = audit is None or audit.stats.available or settings.audit.fail_open
        ready = ready and audit_up
        body = {
            "status": "ready" if ready else "not_ready",
            "policy": policy,
            "upstreams": upstreams,
            "redis": "up" if redis.available else "down (cache bypassed, limits per replica)",
            "audit": "disabled" if audit is None else ("up" if audit.stats.available else "failing"),
        }
        return JSONResponse(body, status_code=200 if ready else 503)

    document = openapi_document(package_version())

    async def openapi(_request: Request) -> JSONResponse:
        return JSONResponse(document)

    async def scrape(_request: Request) -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    app = Starlette(
        routes=[
            Route("/healthz", healthz),
            Route("/readyz", readyz),
            Route("/openapi.json", openapi),
            *([] if settings.metrics.port is not None else [Route("/metrics", scrape)]),
            Route("/v1/models", models_route(services), methods=["GET"]),
            Route("/v1/chat/completions", completion_route(services, "chat.completions"), methods=["POST"]),
            Route("/v1/completions", completion_route(services, "completions"), methods=["POST"]),
        ],
        lifespan=lifespan,
    )
    app.state.services = services
    app.state.metrics = metrics
    app.state.audit = audit
    install_error_handlers(app)
    return app


def request_telemetry(
    settings: GatewaySettings, metrics: GatewayMetrics, tracing: Tracing | None
) -> RequestTelemetry | None:
    if not settings.metrics.requests and tracing is None:
        return None
    return RequestTelemetry(metrics if settings.metrics.requests else None, tracing)


def start_metrics_port(settings: GatewaySettings, metrics: GatewayMetrics) -> WSGIServer | None:
    """Serve the metrics on ``metrics.port`` (plain HTTP, a thread of its own) when it is set."""
    where = settings.metrics
    if where.port is None:
        return None
    server, _thread = start_http_server(where.port, where.host, registry=metrics.registry)
    logger.info("metrics served", extra={"host": settings.metrics.host, "port": server.server_port})
    return server


def load_scanner(settings: GatewaySettings) -> InjectionScanner:
    """The injection scanner; without its rules and weights the gateway does not start (fail closed)."""
    try:
        return InjectionScanner.load(settings.guards.injection)
    except (OSError, ValueError) as exc:  # rules errors are already ConfigErrors naming the file
        raise ConfigError(f"guards.injection: cannot load the classifier weights ({exc})") from None


def reload_on_sighup(policies: PolicyStore) -> None:
    """``kill -HUP`` reloads the policies at once (only possible from the main thread's loop)."""
    if threading.current_thread() is not threading.main_thread():
        return
    with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
        asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, policies.reload)
