"""A pool of workers behind one httpx client that speaks mTLS to them."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import httpx

from gateway.settings import UpstreamSettings
from gateway.tls import client_context


@dataclass(frozen=True, slots=True)
class WorkerHealth:
    url: str
    healthy: bool
    detail: str


class WorkerPool:
    def __init__(self, settings: UpstreamSettings) -> None:
        self.settings = settings
        headers = {}
        if settings.api_key is not None:
            headers["Authorization"] = f"Bearer {settings.api_key.get_secret_value()}"
        self.client = httpx.AsyncClient(
            verify=client_context(settings.tls.files(), check_hostname=settings.tls.check_hostname),
            timeout=httpx.Timeout(settings.read_timeout_s, connect=settings.connect_timeout_s),
            limits=httpx.Limits(
                max_connections=settings.max_connections,
                max_keepalive_connections=settings.max_connections,
            ),
            headers=headers,
            follow_redirects=False,
            trust_env=False,  # never route worker traffic through a proxy from the environment
        )

    async def probe(self, timeout_s: float = 2.0) -> list[WorkerHealth]:
        """Ask every worker's ``/health`` over the pool's TLS settings, concurrently."""
        return list(await asyncio.gather(*(self._probe_one(url, timeout_s) for url in self.settings.workers)))

    async def _probe_one(self, url: str, timeout_s: float) -> WorkerHealth:
        try:
            response = await self.client.get(f"{url.rstrip('/')}/health", timeout=timeout_s)
        except httpx.HTTPError as exc:
            # The exception class says enough (TLS refused, connect refused, timeout) and leaks nothing.
            return WorkerHealth(url, False, type(exc).__name__)
        return WorkerHealth(url, response.status_code == 200, f"HTTP {response.status_code}")

    async def aclose(self) -> None:
        await self.client.aclose()
