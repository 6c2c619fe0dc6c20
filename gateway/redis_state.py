"""The gateway's one Redis client, and whether Redis is usable right now.

Callers check ``available`` before a Redis call and report a failed call with ``failed(exc)``.
The first failure of a connection or a timeout marks Redis down (one log line); while it is down
the cache is bypassed and limits are enforced in process, so no request waits on a dead server.
A background task probes with exponential backoff and marks it up again (one log line). Other
errors (an answer Redis refused, such as out of memory) fail only the call that met them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import ssl
import time
from typing import Any

from redis.asyncio import ConnectionPool, Redis
from redis.asyncio.connection import Connection, SSLConnection, UnixDomainSocketConnection, parse_url
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from gateway.redis_settings import RedisSettings
from gateway.tls import TlsFiles, client_context

logger = logging.getLogger(__name__)

# Everything a Redis call can raise that is not a bug of ours. TimeoutError covers asyncio's too.
REDIS_ERRORS: tuple[type[BaseException], ...] = (RedisError, OSError)
_OUTAGE_ERRORS: tuple[type[BaseException], ...] = (RedisConnectionError, RedisTimeoutError, OSError)
_ERROR_LOG_INTERVAL_S = 60.0


class _TlsConnection(SSLConnection):
    """redis-py's TLS connection, but with the context built by ``gateway.tls`` (trusts only ``ca``)."""

    def __init__(self, *, tls_context: ssl.SSLContext, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.ssl_context.context = tls_context


def build_client(settings: RedisSettings) -> Redis:
    """A client with no retries (an outage is handled by the caller, not waited out per call)."""
    options: dict[str, Any] = dict(parse_url(settings.url.get_secret_value()))
    options.pop("connection_class", None)
    kwargs: dict[str, Any] = {
        "socket_timeout": settings.command_timeout_s,
        "socket_connect_timeout": settings.connect_timeout_s,
        "retry": Retry(NoBackoff(), 0),
        "decode_responses": False,
        "client_name": "warden-gateway",
    }
    if "path" in options:
        connection_class: type[Connection] | type[UnixDomainSocketConnection] = UnixDomainSocketConnection
    elif settings.tls:
        connection_class = _TlsConnection
        files = TlsFiles(ca=settings.ca, cert=settings.cert, key=settings.key)
        kwargs["tls_context"] = client_context(files, check_hostname=settings.check_hostname)
    else:
        connection_class = Connection
    if settings.username is not None:
        options["username"] = settings.username.get_secret_value()
    if settings.password is not None:
        options["password"] = settings.password.get_secret_value()
    pool = ConnectionPool(
        connection_class=connection_class,
        max_connections=settings.max_connections,
        **options,
        **kwargs,
    )
    return Redis.from_pool(pool)  # closing the client closes the pool


class RedisState:
    """The shared client plus the up/down state everyone consults; counters for metrics."""

    def __init__(self, settings: RedisSettings, client: Redis | None = None) -> None:
        self.settings = settings
        self.client = client if client is not None else build_client(settings)
        self.prefix = settings.key_prefix
        self._available = True
        self._down_since = 0.0
        self._recovery: asyncio.Task[None] | None = None
        self._last_error_log = -_ERROR_LOG_INTERVAL_S
        self.outages = 0  # times Redis went from up to down
        self.command_errors = 0  # calls that failed while Redis stayed up

    @property
    def available(self) -> bool:
        return self._available

    async def start(self) -> None:
        """Probe once; an unreachable Redis does not stop the gateway, it starts degraded."""
        try:
            await self.client.ping()
        except REDIS_ERRORS as exc:
            self.failed(exc)
        else:
            logger.info("redis connected", extra={"tls": self.settings.tls})

    async def close(self) -> None:
        if self._recovery is not None:
            self._recovery.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._recovery
        await self.client.aclose()

    def failed(self, exc: BaseException) -> None:
        """Report a failed call. Connection failures and timeouts mark Redis down until a probe passes."""
        if not isinstance(exc, _OUTAGE_ERRORS):
            self.command_errors += 1
            now = time.monotonic()
            if now - self._last_error_log >= _ERROR_LOG_INTERVAL_S:
                self._last_error_log = now
                logger.error("redis refused a command", extra={"error_type": type(exc).__name__})
            return
        if not self._available:
            return
        self._available = False
        self._down_since = time.monotonic()
        self.outages += 1
        logger.warning(
            "redis unavailable: cache bypassed, limits enforced per replica",
            extra={"error_type": type(exc).__name__},
        )
        self._recovery = asyncio.get_running_loop().create_task(self._recover())

    async def _recover(self) -> None:
        delay = self.settings.recovery_initial_s
        while True:
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))  # noqa: S311 - jitter, not a secret
            # Connections opened before the outage are dead; without this each would fail one call.
            await self.client.connection_pool.disconnect()
            try:
                await self.client.ping()
            except REDIS_ERRORS:
                delay = min(delay * 2, self.settings.recovery_max_s)
                continue
            self._available = True
            down_s = round(time.monotonic() - self._down_since, 3)
            logger.warning("redis available again", extra={"down_s": down_s})
            return

    def key(self, *parts: str) -> str:
        return self.prefix + ":".join(parts)
