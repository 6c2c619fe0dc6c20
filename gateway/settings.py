"""The gateway's typed settings: a YAML file (``--config``) plus ``WARDEN_GATEWAY_*`` overrides."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, field_validator, model_validator

from gateway.audit.settings import AuditSettings
from gateway.auth.settings import AuthSettings
from gateway.config import StrictModel, load_settings
from gateway.guards.settings import GuardSettings
from gateway.redis_settings import CacheSettings, RedisSettings
from gateway.tls import TlsFiles

ENV_PREFIX = "WARDEN_GATEWAY_"


class ServerTlsSettings(StrictModel):
    """TLS for the gateway's own listener (clients to gateway). Optional behind a TLS-terminating proxy."""

    cert: Path
    key: Path

    def files(self) -> TlsFiles:
        return TlsFiles(cert=self.cert, key=self.key)


class UpstreamTlsSettings(StrictModel):
    """How the gateway verifies a worker (``ca``) and proves itself to it (``cert``/``key``: mTLS)."""

    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None
    check_hostname: bool = True
    # Seconds between checks of the files for a renewal or rotation (gateway.tls_reload); 0 = never.
    reload_interval_s: float = Field(default=5.0, ge=0, le=3600)

    @model_validator(mode="after")
    def _cert_and_key_together(self) -> UpstreamTlsSettings:
        if (self.cert is None) != (self.key is None):
            raise ValueError("cert and key must be given together")
        return self

    def files(self) -> TlsFiles:
        return TlsFiles(ca=self.ca, cert=self.cert, key=self.key)


class UpstreamSettings(StrictModel):
    """A pool of workers that serve the same models."""

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    models: list[str] = Field(min_length=1)
    workers: list[str] = Field(min_length=1)
    tls: UpstreamTlsSettings = UpstreamTlsSettings()
    # For OpenAI-compatible workers that are not ours and authenticate with a key instead of mTLS.
    api_key: SecretStr | None = None
    connect_timeout_s: float = Field(default=2.0, gt=0, le=60)
    read_timeout_s: float = Field(default=120.0, gt=0, le=3600)
    max_connections: int = Field(default=256, ge=1, le=10_000)
    # An idle pooled connection is closed after this long. Keep it below the workers' own keep-alive
    # timeout (uvicorn's default, and so vLLM's, is 5 s; ours is 30 s): a request sent on a
    # connection the worker is closing at that moment fails with nowhere to go when one worker serves.
    idle_connection_timeout_s: float = Field(default=4.0, gt=0, le=300)
    health_interval_s: float = Field(default=5.0, gt=0, le=300)
    # Passive ejection: this many consecutive failures open the circuit for open_cooldown_s.
    failure_threshold: int = Field(default=3, ge=1, le=100)
    open_cooldown_s: float = Field(default=10.0, gt=0, le=600)
    # Our workers key their prefix cache by this tenant-derived salt; other engines may not accept it.
    send_cache_salt: bool = True

    @field_validator("workers")
    @classmethod
    def _https_only(cls, workers: list[str]) -> list[str]:
        for url in workers:
            if not url.startswith("https://"):
                raise ValueError(f"worker URL must use https:// (got {url!r})")
        return workers


class LimitsSettings(StrictModel):
    """Edge checks applied before anything else looks at a request."""

    max_body_bytes: int = Field(default=1_048_576, ge=1024, le=64 * 1_048_576)
    max_messages: int = Field(default=256, ge=1, le=4096)
    max_message_chars: int = Field(default=200_000, ge=1, le=10_000_000)
    max_response_bytes: int = Field(default=16 * 1_048_576, ge=1024, le=1 << 30)


class MetricsSettings(StrictModel):
    """Where Prometheus scrapes: ``/metrics`` on the API port, or (``port`` set) only on a port of its
    own over plain HTTP, so that the API port can face clients and the metrics stay in the cluster."""

    port: int | None = Field(default=None, ge=0, le=65535)
    host: str = "127.0.0.1"
    # Off: no per-request metrics (the state gauges stay); for measuring what the metrics cost.
    requests: bool = True


class GatewaySettings(StrictModel):
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    tls: ServerTlsSettings | None = None
    auth: AuthSettings = AuthSettings()
    policy_dir: Path = Path("policies")
    policy_reload_interval_s: float = Field(default=2.0, gt=0, le=3600)
    upstreams: list[UpstreamSettings] = Field(default_factory=list)
    limits: LimitsSettings = LimitsSettings()
    redis: RedisSettings = RedisSettings()
    cache: CacheSettings = CacheSettings()
    audit: AuditSettings = AuditSettings()
    guards: GuardSettings = GuardSettings()
    metrics: MetricsSettings = MetricsSettings()
    graceful_shutdown_s: float = Field(default=30.0, ge=0, le=600)
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    @model_validator(mode="after")
    def _unique_upstream_names(self) -> GatewaySettings:
        names = [u.name for u in self.upstreams]
        if len(names) != len(set(names)):
            raise ValueError("upstream names must be unique")
        return self


def load_gateway_settings(
    path: str | Path | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> GatewaySettings:
    return load_settings(GatewaySettings, path, env_prefix=ENV_PREFIX, environ=environ, overrides=overrides)
