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

    def files(self) -> TlsFiles:
        return TlsFiles(ca=self.ca, cert=self.cert, key=self.key)

    def complete(self) -> bool:
        return self.cert is not None and self.key is not None and self.ca is not None


class WorkerSettings(StrictModel):
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    model: str = "default"
    served_model_name: str | None = None
    dtype: Literal["auto", "bfloat16", "float32"] = "auto"
    tls: WorkerTlsSettings = WorkerTlsSettings()
    # Plain HTTP for local experiments only; the server logs a loud warning when it is on.
    insecure_dev: bool = False
    graceful_shutdown_s: float = Field(default=30.0, ge=0, le=600)
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    @model_validator(mode="after")
    def _tls_unless_insecure(self) -> WorkerSettings:
        if not self.insecure_dev and not self.tls.complete():
            raise ValueError(
                "the worker serves mTLS only: set tls.cert, tls.key and tls.ca "
                "(or pass --insecure-dev for a local experiment)"
            )
        return self


def load_worker_settings(
    path: str | Path | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> WorkerSettings:
    return load_settings(WorkerSettings, path, env_prefix=ENV_PREFIX, environ=environ, overrides=overrides)
