"""Run an ASGI app on uvicorn with our SSL context, an optional client allowlist and graceful drain.

Used by both services. On SIGTERM/SIGINT uvicorn stops accepting connections and waits up to
``graceful_shutdown_s`` for in-flight requests to finish before closing.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable, Collection
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

logger = logging.getLogger(__name__)


def peer_identities(peercert: dict[str, Any] | None) -> set[str]:
    """The names a verified peer certificate asserts: SAN DNS/IP entries and the subject CN."""
    if not peercert:
        return set()
    names = {value for kind, value in peercert.get("subjectAltName", ()) if kind in ("DNS", "IP Address")}
    for rdn in peercert.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                names.add(value)
    return names


def _allowlisted_protocol(base: type[asyncio.Protocol], allowed: frozenset[str]) -> type[asyncio.Protocol]:
    """A protocol class that drops TLS connections whose client identity is not in ``allowed``.

    The TLS handshake has already verified the certificate against the CA when ``connection_made``
    runs; this adds the identity check that ``ssl`` has no hook for.
    """

    class AllowlistedProtocol(base):  # type: ignore[valid-type,misc]
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            super().connection_made(transport)
            identities = peer_identities(transport.get_extra_info("peercert"))
            if not identities & allowed:
                logger.warning("refused a client certificate outside the allowlist")
                transport.abort()  # type: ignore[attr-defined]

    return AllowlistedProtocol


def serve(
    app: Callable[..., Any],
    *,
    host: str,
    port: int,
    ssl_context: ssl.SSLContext | None,
    graceful_shutdown_s: float,
    log_level: str = "info",
    allowed_clients: Collection[str] = (),
    keep_alive_s: int = 5,
) -> None:
    """Serve ``app`` until SIGTERM/SIGINT, then drain. Blocks.

    ``keep_alive_s`` is how long an idle client connection is kept open; a client that reuses
    connections must close its idle ones sooner, or it may send on one being closed.
    """
    protocol: type[asyncio.Protocol] = HttpToolsProtocol
    if allowed_clients:
        protocol = _allowlisted_protocol(protocol, frozenset(allowed_clients))
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        http=protocol,
        loop="uvloop",
        lifespan="on",
        access_log=False,  # one structured line per request comes from the app itself
        server_header=False,
        proxy_headers=False,
        log_level=log_level,
        log_config=None,  # keep the JSON logging set up by gateway.logs
        timeout_graceful_shutdown=max(1, round(graceful_shutdown_s)),
        timeout_keep_alive=keep_alive_s,
        ssl_context_factory=(lambda _config, _default: ssl_context) if ssl_context is not None else None,
    )
    uvicorn.Server(config).run()
