"""The real worker (default model) in a subprocess over mTLS, and the gateway-side client context."""

from __future__ import annotations

import ssl
from pathlib import Path

import httpx

from gateway.pki import PkiPaths
from gateway.tls import TlsFiles, client_context
from tests.support.ports import free_port
from tests.support.processes import ServiceProcess

MODEL_NAME = "smollm2"


def gateway_ssl(pki: PkiPaths) -> ssl.SSLContext:
    return client_context(TlsFiles(ca=pki.ca_cert, cert=pki.gateway_cert, key=pki.gateway_key))


def launch_worker(
    log_dir: Path, cert: Path, key: Path, ca: Path, *extra: str, kv_cache_mb: int = 16
) -> tuple[ServiceProcess, str]:
    """Start a worker with these certificate files; the caller waits for whatever readiness it needs."""
    port = free_port()
    worker = ServiceProcess.python_module(
        "backend", "serve", "--port", str(port), "--served-model-name", MODEL_NAME,
        "--tls-cert", str(cert), "--tls-key", str(key), "--tls-ca", str(ca),
        "--kv-cache-memory", str(kv_cache_mb), *extra,
        log_path=log_dir / f"worker-{port}.log",
    ).start()  # fmt: skip
    return worker, f"https://localhost:{port}"


def start_worker(pki: PkiPaths, log_dir: Path, *extra: str) -> tuple[ServiceProcess, str]:
    """A worker serving the default model as ``smollm2``; returns it once /health says the model is ready."""
    worker, url = launch_worker(
        log_dir, pki.worker_cert, pki.worker_key, pki.ca_cert, *extra, kv_cache_mb=128
    )
    context = gateway_ssl(pki)
    worker.wait_until(lambda: httpx.get(f"{url}/health", verify=context, timeout=2).status_code == 200, 90)
    return worker, url
