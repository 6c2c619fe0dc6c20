"""Both services as real processes: the gateway reaches the worker over mTLS and says so in /readyz."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from gateway.pki import PkiPaths
from gateway.tls import TlsFiles, client_context
from tests.support.ports import free_port
from tests.support.processes import ServiceProcess
from tests.support.worker import launch_worker


@pytest.fixture(scope="module")
def worker_url(pki: PkiPaths, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    log_dir = tmp_path_factory.mktemp("worker")
    worker, url = launch_worker(
        log_dir, pki.worker_cert, pki.worker_key, pki.ca_cert, "--allow-client", "warden-gateway"
    )
    verify = client_context(TlsFiles(ca=pki.ca_cert, cert=pki.gateway_cert, key=pki.gateway_key))
    worker.wait_http(f"{url}/health", verify=verify)
    yield url
    worker.stop()


def start_gateway(
    tmp_path: Path, upstream_tls: dict[str, str], worker_url: str
) -> tuple[ServiceProcess, str]:
    port = free_port()
    config = {
        "port": port,
        "upstreams": [{"name": "local", "models": ["*"], "workers": [worker_url], "tls": upstream_tls}],
    }
    (tmp_path / "gateway.yaml").write_text(json.dumps(config))  # JSON is valid YAML
    gateway = ServiceProcess.python_module(
        "gateway", "serve", "--config", str(tmp_path / "gateway.yaml"), log_path=tmp_path / "gateway.log"
    ).start()
    url = f"http://127.0.0.1:{port}"
    gateway.wait_http(f"{url}/healthz")
    return gateway, url


def test_gateway_reports_the_worker_ready_over_mtls(pki: PkiPaths, worker_url: str, tmp_path: Path) -> None:
    tls = {"ca": str(pki.ca_cert), "cert": str(pki.gateway_cert), "key": str(pki.gateway_key)}
    gateway, url = start_gateway(tmp_path, tls, worker_url)
    try:
        response = httpx.get(f"{url}/readyz", timeout=10)
        assert response.status_code == 200, response.text
        assert response.json()["upstreams"][0]["workers"][0] == {
            "url": worker_url,
            "healthy": True,
            "detail": "HTTP 200",
            "circuit": "closed",
        }
    finally:
        gateway.stop()
    logs = gateway.logs()
    assert '"msg": "gateway starting"' in logs
    assert "Traceback" not in logs


def test_gateway_without_client_certificate_is_not_ready(
    pki: PkiPaths, worker_url: str, tmp_path: Path
) -> None:
    gateway, url = start_gateway(tmp_path, {"ca": str(pki.ca_cert)}, worker_url)
    try:
        response = httpx.get(f"{url}/readyz", timeout=10)
        assert response.status_code == 503
        body = response.json()
        assert body["status"] == "not_ready"
        worker = body["upstreams"][0]["workers"][0]
        assert worker["healthy"] is False
        assert worker["detail"] in {"ServerDisconnectedError", "ClientOSError", "ClientConnectorError"}
    finally:
        gateway.stop()


def test_worker_refuses_to_start_without_certificates() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "backend", "serve", "--port", str(free_port())],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "serves mTLS only" in result.stderr
    assert "Traceback" not in result.stderr


def test_insecure_dev_mode_warns_loudly(tmp_path: Path) -> None:
    port = free_port()
    worker = ServiceProcess.python_module(
        "backend",
        "serve",
        "--insecure-dev",
        "--kv-cache-memory",
        "16",
        "--port",
        str(port),
        log_path=tmp_path / "insecure.log",
    ).start()
    try:
        worker.wait_http(f"http://127.0.0.1:{port}/health")
    finally:
        worker.stop()
    warnings = [json.loads(line) for line in worker.logs().splitlines() if line.startswith("{")]
    assert any(entry["level"] == "warning" and "INSECURE" in entry["msg"] for entry in warnings)


def test_gateway_with_bad_settings_exits_with_a_clear_message(tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text("port: not-a-port\n")
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "serve", "--config", str(tmp_path / "bad.yaml")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "port: Input should be a valid integer" in result.stderr
    assert "Traceback" not in result.stderr
