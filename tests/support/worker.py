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


def start_worker(pki: PkiPaths, log_dir: Path, *extra: str) -> tuple[ServiceProcess, str]:
    """A worker serving the default model as ``smollm2``; returns it once /health says the model is ready."""
    port = free_port()
    worker = ServiceProcess.python_module(
        "backend", "serve", "--port", str(port), "--served-model-name", MODEL_NAME,
        "--tls-cert", str(pki.worker_cert), "--tls-key", str(pki.worker_key), "--tls-ca", str(pki.ca_cert),
        "--kv-cache-memory", "128", *extra,
        log_path=log_dir / f"worker-{port}.log",
    ).start()  # fmt: skip
    url = f"https://localhost:{port}"
    context = gateway_ssl(pki)
    worker.wait_until(lambda: httpx.get(f"{url}/health", verify=context, timeout=2).status_code == 200, 90)
    return worker, url
