"""A pool's client TLS context, reloaded from its files, and the pooled connections it may reuse.

aiohttp keys pooled connections by the request's ``ssl`` context, so a request made with a new
context never reuses a connection made with the old one: a CA removed from the bundle stops being
trusted at once. Idle connections made with an old context, or to a worker whose certificate has
expired since the handshake, are closed at each poll instead of lingering until their keep-alive
timeout (an established TLS connection is never verified again).
"""

from __future__ import annotations

import ssl
import time
from dataclasses import asdict
from typing import Any

import aiohttp

from gateway.settings import UpstreamTlsSettings
from gateway.tls import client_context
from gateway.tls_reload import ReloadingContext


class UpstreamTls:
    def __init__(self, settings: UpstreamTlsSettings, name: str) -> None:
        files = settings.files()
        self.source = ReloadingContext(
            files,
            lambda: client_context(files, check_hostname=settings.check_hostname),
            interval_s=settings.reload_interval_s,
            label=f"upstream {name}",
        )

    @property
    def context(self) -> ssl.SSLContext:
        return self.source.context

    def for_request(self, session: aiohttp.ClientSession) -> ssl.SSLContext:
        """The context for a new request; polls the files when due and then sweeps the idle pool."""
        if self.source.poll_if_due():
            close_stale_idle(session.connector, self.source.context)
        return self.source.context

    def status(self) -> dict[str, Any]:
        """Generation, reload counts, the last refusal and the expiry in use (for ``/readyz``)."""
        return asdict(self.source.status())


def close_stale_idle(connector: aiohttp.BaseConnector | None, current: ssl.SSLContext) -> int:
    """Close idle connections made with another context or to a peer whose certificate has expired.

    aiohttp has no public call for this; its idle pool is ``_conns`` (key -> [(protocol, last use)]).
    Should that change, nothing breaks: stale connections are still never reused for a new context,
    and expire after the connector's keep-alive timeout.
    """
    pool = getattr(connector, "_conns", None)
    if not isinstance(pool, dict):
        return 0
    closed = 0
    now = time.time()
    for key in list(pool):
        idle = pool[key]
        stale_context = getattr(key, "ssl", current) is not current
        alive = []
        for proto, used in idle:
            if stale_context or _peer_expired(proto, now):
                proto.close()
                closed += 1
            else:
                alive.append((proto, used))
        if alive:
            idle.clear()
            idle.extend(alive)
        else:
            del pool[key]
    return closed


def _peer_expired(protocol: Any, now: float) -> bool:
    transport = getattr(protocol, "transport", None)
    peercert = transport.get_extra_info("peercert") if transport is not None else None
    not_after = peercert.get("notAfter") if isinstance(peercert, dict) else None
    return isinstance(not_after, str) and ssl.cert_time_to_seconds(not_after) <= now
