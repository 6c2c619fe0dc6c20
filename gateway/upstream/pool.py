"""A pool of workers behind one aiohttp session: least-outstanding balancing, failover, health.

Failover happens only before the first byte reaches the client: a worker that refuses the
connection, fails the TLS handshake, times out or answers 5xx before its first body chunk is
skipped and the request goes to another worker. Each worker has a circuit breaker (passive
ejection) and an active health check; a worker is chosen only if both let it.

The client is aiohttp rather than httpx: proxying is the gateway's hot path, and aiohttp's C parser
and connection pool cost about a fifth of httpx2's CPU per request (bench/gateway_overhead.py).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field

import aiohttp

from gateway.errors import ServiceUnavailable, UpstreamError
from gateway.settings import UpstreamSettings
from gateway.upstream.breaker import CircuitBreaker, CircuitState
from gateway.upstream.client_tls import UpstreamTls

logger = logging.getLogger(__name__)


class UpstreamStreamError(Exception):
    """The worker failed after its first byte was relayed; the request cannot be retried."""


@dataclass(frozen=True, slots=True)
class WorkerHealth:
    url: str
    healthy: bool
    detail: str
    circuit: str
    outstanding: int


@dataclass(slots=True)
class Worker:
    url: str
    breaker: CircuitBreaker
    outstanding: int = 0
    healthy: bool = True  # optimistic until the first active check
    detail: str = "not checked yet"
    models: tuple[str, ...] = ()

    def usable(self) -> bool:
        return self.healthy and self.breaker.available()


@dataclass(slots=True)
class UpstreamReply:
    """A worker's answer whose status, headers and first body chunk have arrived."""

    status_code: int
    content_type: str
    first_chunk: bytes
    worker: Worker
    _response: aiohttp.ClientResponse
    _pool: WorkerPool
    _settled: bool = field(default=False)

    @property
    def retry_after(self) -> str | None:
        """The worker's ``Retry-After`` (on a 429), passed on to the client."""
        return self._response.headers.get("retry-after")

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body, first chunk included; a transport failure mid-way raises UpstreamStreamError."""
        if self.first_chunk:
            yield self.first_chunk
        try:
            async for chunk in self._response.content.iter_any():
                yield chunk
        except (aiohttp.ClientError, TimeoutError) as exc:
            self._pool.errors["stream_interrupted"] += 1
            self._pool._finish(self, ok=False)
            raise UpstreamStreamError(type(exc).__name__) from None

    async def read(self, max_bytes: int) -> bytes:
        parts, size = [], 0
        async for chunk in self.chunks():
            size += len(chunk)
            if size > max_bytes:
                raise UpstreamError("the worker's answer is too large", code="upstream_response_too_large")
            parts.append(chunk)
        return b"".join(parts)

    async def aclose(self) -> None:
        """Return the connection to the pool if the body was read whole; otherwise close it, which
        tells the worker to abort the generation."""
        if self._response.content.at_eof():
            self._response.release()
        else:
            self._response.close()
        self._pool._finish(self, ok=True)


class WorkerPool:
    def __init__(self, settings: UpstreamSettings, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self.workers = [
            Worker(
                url.rstrip("/"),
                CircuitBreaker(
                    failure_threshold=settings.failure_threshold,
                    cooldown_s=settings.open_cooldown_s,
                    clock=clock,
                ),
            )
            for url in settings.workers
        ]
        self._turn = itertools.count()
        self.errors: Counter[str] = Counter()  # failed exchanges by kind, for the metrics
        self._headers = {"Accept-Encoding": "identity"}
        if settings.api_key is not None:
            self._headers["Authorization"] = f"Bearer {settings.api_key.get_secret_value()}"
        self.tls = UpstreamTls(settings.tls, settings.name)  # reloaded when its files change
        self._session: aiohttp.ClientSession | None = None

    @property
    def session(self) -> aiohttp.ClientSession:
        """The pool's one session, made on first use (aiohttp binds it to the running loop)."""
        if self._session is None:
            settings = self.settings
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(
                    ssl=self.tls.context,
                    limit=settings.max_connections,
                    limit_per_host=settings.max_connections,
                    keepalive_timeout=settings.idle_connection_timeout_s,
                ),
                timeout=aiohttp.ClientTimeout(
                    total=None,
                    connect=settings.connect_timeout_s,
                    sock_read=settings.read_timeout_s,
                ),
                headers=self._headers,
                auto_decompress=False,
                trust_env=False,  # never route worker traffic through a proxy from the environment
                skip_auto_headers=("User-Agent",),
            )
        return self._session

    # -- choosing and sending -------------------------------------------------------------------

    def choose(self, exclude: set[str]) -> Worker | None:
        """The usable worker with the fewest requests in flight; ties rotate so load spreads."""
        candidates = [w for w in self.workers if w.url not in exclude and w.usable()]
        if not candidates:
            # Active checks may lag a recovery; a worker whose breaker allows is still worth a try.
            candidates = [w for w in self.workers if w.url not in exclude and w.breaker.available()]
        if not candidates:
            return None
        start = next(self._turn) % len(candidates)
        rotated = candidates[start:] + candidates[:start]
        for worker in sorted(rotated, key=lambda w: w.outstanding):
            if worker.breaker.acquire():
                return worker
        return None

    async def send(self, path: str, body: bytes, headers: Mapping[str, str]) -> UpstreamReply:
        """POST ``body`` to a worker and wait for its first chunk, failing over before that."""
        tried: set[str] = set()
        busy = failed = 0
        while (worker := self.choose(tried)) is not None:
            tried.add(worker.url)
            worker.outstanding += 1
            reply = await self._attempt(worker, path, body, headers)
            if isinstance(reply, UpstreamReply):
                return reply
            worker.outstanding -= 1
            self.errors[reply if reply in _ERROR_KINDS else "status"] += 1
            if reply == "busy":
                busy += 1
                worker.breaker.release()
            else:
                failed += 1
                worker.breaker.record_failure()
                logger.warning(
                    "worker failed before the first byte; trying another",
                    extra={"upstream": self.settings.name, "worker": worker.url, "reason": reply},
                )
        if busy and not failed:
            raise ServiceUnavailable(
                "Every worker for this model is busy; retry shortly.",
                code="upstream_overloaded",
                headers={"Retry-After": "1"},
            )
        if not tried:
            self.errors["no_healthy_worker"] += 1
            raise ServiceUnavailable(
                "No healthy worker serves this model right now.", code="no_healthy_worker"
            )
        raise UpstreamError()

    async def _attempt(
        self, worker: Worker, path: str, body: bytes, headers: Mapping[str, str]
    ) -> UpstreamReply | str:
        """One try on one worker: the reply, or why it failed ("busy" or a failure reason)."""
        try:
            response = await self.session.post(
                worker.url + path,
                data=body,
                headers=headers,
                allow_redirects=False,
                ssl=self.tls.for_request(self.session),
            )
        except (aiohttp.ClientError, TimeoutError) as exc:
            return _failure_kind(exc)
        except BaseException:
            worker.outstanding -= 1
            worker.breaker.release()
            raise
        try:
            if response.status >= 500:
                response.release()
                return "busy" if response.status == 503 else f"HTTP {response.status}"
            first = await response.content.readany()
        except (aiohttp.ClientError, TimeoutError) as exc:
            response.close()
            return _failure_kind(exc)
        except BaseException:
            response.close()
            worker.outstanding -= 1
            worker.breaker.release()
            raise
        worker.breaker.record_success()
        return UpstreamReply(
            status_code=response.status,
            content_type=response.headers.get("content-type", "application/json"),
            first_chunk=first,
            worker=worker,
            _response=response,
            _pool=self,
        )

    def _finish(self, reply: UpstreamReply, *, ok: bool) -> None:
        if reply._settled:
            return
        reply._settled = True
        reply.worker.outstanding -= 1
        if not ok:
            reply.worker.breaker.record_failure()

    # -- health ---------------------------------------------------------------------------------

    async def check_health(self, timeout_s: float = 2.0) -> list[WorkerHealth]:
        """Ask every worker's ``/health`` (and ``/v1/models``) concurrently; update their state."""
        await asyncio.gather(*(self._check_one(w, timeout_s) for w in self.workers))
        return self.health()

    async def _check_one(self, worker: Worker, timeout_s: float) -> None:
        timeout = aiohttp.ClientTimeout(total=timeout_s)
        try:
            ssl = self.tls.for_request(self.session)
            async with self.session.get(f"{worker.url}/health", timeout=timeout, ssl=ssl) as response:
                healthy = response.status == 200
                detail = f"HTTP {response.status}"
            if healthy and self.has_patterns():
                async with self.session.get(f"{worker.url}/v1/models", timeout=timeout, ssl=ssl) as listed:
                    if listed.status == 200:
                        worker.models = _model_ids(await listed.json())
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            # The exception class says enough (TLS refused, connect refused, timeout) and leaks nothing.
            healthy, detail = False, type(exc).__name__
        if healthy != worker.healthy:
            logger.warning(
                "worker health changed",
                extra={"upstream": self.settings.name, "worker": worker.url, "healthy": healthy},
            )
        worker.healthy, worker.detail = healthy, detail

    async def run_health_checks(self) -> None:
        """Check every ``health_interval_s`` until cancelled."""
        while True:
            await self.check_health()
            await asyncio.sleep(self.settings.health_interval_s)

    def health(self) -> list[WorkerHealth]:
        return [
            WorkerHealth(w.url, w.healthy, w.detail, w.breaker.state.value, w.outstanding)
            for w in self.workers
        ]

    def is_ready(self) -> bool:
        return any(w.healthy and w.breaker.state is not CircuitState.OPEN for w in self.workers)

    def has_patterns(self) -> bool:
        return any(is_model_pattern(m) for m in self.settings.models)

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()


def is_model_pattern(name: str) -> bool:
    return any(ch in name for ch in "*?[")


def _model_ids(listing: object) -> tuple[str, ...]:
    data = listing.get("data") if isinstance(listing, dict) else None
    if not isinstance(data, list):
        return ()
    return tuple(str(m["id"]) for m in data if isinstance(m, dict) and isinstance(m.get("id"), str))


_ERROR_KINDS = frozenset({"busy", "connect", "timeout", "disconnected", "tls", "other"})


def _failure_kind(exc: BaseException) -> str:
    """A failed attempt's kind, as the metrics label it (and the retry log line names it)."""
    if isinstance(exc, aiohttp.ClientConnectorCertificateError | aiohttp.ClientSSLError):
        return "tls"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return "connect"
    if isinstance(exc, TimeoutError | aiohttp.ServerTimeoutError):
        return "timeout"
    if isinstance(exc, aiohttp.ServerDisconnectedError | aiohttp.ClientPayloadError | aiohttp.ClientOSError):
        return "disconnected"
    return "other"
