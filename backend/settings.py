"""The worker's typed settings: a YAML file (``--config``) plus ``WARDEN_WORKER_*`` overrides."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from gateway.config import StrictModel, load_settings
from gateway.tls import TlsFiles

ENV_PREFIX = "WARDEN_WORKER_"


class WorkerTlsSettings(StrictModel):
    """The worker's certificate and the CA its clients (the gateways) must be signed by."""

    cert: Path | None = None
    key: Path | None = None
    ca: Path | None = None
    # Client identities (SAN DNS names or the subject CN) allowed to connect; empty = any cert from `ca`.
    allowed_clients: list[str] = Field(default_factory=list)
    # Seconds between checks of the files for a renewal or rotation (gateway.tls_reload); 0 = never.
    reload_interval_s: float = Field(default=5.0, ge=0, le=3600)

    def files(self) -> TlsFiles:
        return TlsFiles(ca=self.ca, cert=self.cert, key=self.key)

    def complete(self) -> bool:
        return self.cert is not None and self.key is not None and self.ca is not None


class WorkerSettings(StrictModel):
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    model: str = "default"
    model_sha256: str | None = Field(default=None, pattern=r"^[0-9a-fA-F]{64}$")
    served_model_name: str | None = None
    dtype: Literal["auto", "bfloat16", "float32"] = "auto"
    kv_cache_memory_mb: int = Field(default=1024, ge=1, le=1 << 20)
    block_size: Literal[8, 16, 32, 64, 128] = 16
    max_num_seqs: int = Field(default=64, ge=1, le=4096)
    max_num_batched_tokens: int = Field(default=1024, ge=16, le=1 << 20)
    # Requests queued beyond the running ones; one more gets 429 with Retry-After.
    max_waiting: int = Field(default=256, ge=1, le=100_000)
    # Per-request ceiling on generated tokens, so that one request cannot hold the worker for long.
    max_tokens_cap: int = Field(default=4096, ge=1)
    max_body_bytes: int = Field(default=4 * 1_048_576, ge=1024, le=256 * 1_048_576)
    tls: WorkerTlsSettings = WorkerTlsSettings()
    # Plain HTTP for local experiments only; the server logs a loud warning when it is on.
    insecure_dev: bool = False
    graceful_shutdown_s: float = Field(default=30.0, ge=0, le=600)
    # Prometheus metrics over plain HTTP on their own port (for in-cluster scraping); the mTLS port
    # then no longer serves /metrics. Unset: /metrics is served on the main port.
    metrics_port: int | None = Field(default=None, ge=0, le=65535)
    metrics_host: str = "127.0.0.1"
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    @property
    def model_name(self) -> str:
        """The name clients use: ``served_model_name``, else the model file or directory name."""
        if self.served_model_name:
            return self.served_model_name
        return "SmolLM2-135M-Instruct" if self.model == "default" else Path(self.model).name

    @model_validator(mode="after")
    def _tls_unless_insecure(self) -> WorkerSettings:
        if not self.insecure_dev and not self.tls.complete():
            raise ValueError(
                "the worker serves mTLS only: set tls.cert, tls.key and tls.ca "
                "(or pass --insecure-dev for a local experiment)"
            )
        return self

    @model_validator(mode="after")
    def _metrics_port_is_its_own(self) -> WorkerSettings:
        if self.metrics_port is not None and self.metrics_port != 0 and self.metrics_port == self.port:
            raise ValueError(f"metrics_port must differ from port (both are {self.port})")
        return self


def load_worker_settings(
    path: str | Path | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> WorkerSettings:
    return load_settings(WorkerSettings, path, env_prefix=ENV_PREFIX, environ=environ, overrides=overrides)
