"""`make demo`: start the worker and the gateway over mTLS on this machine and show what is up.

Each capability that lands extends this script, so a newcomer sees the product working end to end.
Pass --keep to leave both services running until Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from contextlib import ExitStack
from pathlib import Path

import httpx

from gateway.pki import init_pki
from gateway.tls import TlsFiles, client_context
from scripts.demo_audit import prepare_audit, run_audit_demo
from scripts.demo_gateway import prepare_identity, run_gateway_demo
from scripts.demo_observability import run_observability_demo, span_collector
from scripts.demo_resilience import run_resilience_demo
from scripts.demo_worker import run_worker_demo
from tests.support.ports import free_port
from tests.support.processes import ServiceProcess
from tests.support.redis_server import RedisServer

RUN_DIR = Path("run/demo")


def heading(text: str) -> None:
    print(f"\n== {text}")


def row(label: str, value: str) -> None:
    print(f"  {label:<28} {value}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--keep", action="store_true", help="keep the services running until Ctrl-C")
    args = parser.parse_args()

    heading("PKI (python -m gateway certs init)")
    paths, written = init_pki(RUN_DIR / "pki")
    row("certificates", f"{'created' if written else 'reused'} in {paths.root}")
    mtls = TlsFiles(ca=paths.ca_cert, cert=paths.gateway_cert, key=paths.gateway_key)
    identity = prepare_identity(RUN_DIR)
    audit = prepare_audit(RUN_DIR)

    worker_port, gateway_port = free_port(), free_port()
    worker_metrics_port, gateway_metrics_port = free_port(), free_port()
    services = ExitStack()
    traced = services.enter_context(span_collector())
    worker_url = f"https://localhost:{worker_port}"
    gateway_url = f"http://127.0.0.1:{gateway_port}"
    logs = RUN_DIR / "logs"
    worker = ServiceProcess.python_module(
        "backend", "serve", "--port", str(worker_port), "--kv-cache-memory", "256",
        "--served-model-name", "smollm2",
        "--tls-cert", str(paths.worker_cert), "--tls-key", str(paths.worker_key),
        "--tls-ca", str(paths.ca_cert), "--allow-client", "warden-gateway",
        "--metrics-port", str(worker_metrics_port), "--tls-reload-interval", "1",
        log_path=logs / "worker.log", env=traced,
    )  # fmt: skip
    redis = RedisServer(RUN_DIR / "redis")
    config = {
        "port": gateway_port,
        "redis": {"url": redis.url},
        "audit": audit,
        "auth": {"issuers": [identity.issuer_settings()]},
        "policy_dir": str(identity.policy_dir),
        "metrics": {"port": gateway_metrics_port},
        "upstreams": [
            {
                "name": "local",
                "models": ["smollm*"],
                "workers": [worker_url],
                "tls": {
                    "ca": str(paths.ca_cert),
                    "cert": str(paths.gateway_cert),
                    "key": str(paths.gateway_key),
                    "reload_interval_s": 1,
                },
            }
        ],
    }
    (RUN_DIR / "gateway.yaml").write_text(json.dumps(config, indent=2))
    gateway = ServiceProcess.python_module(
        "gateway",
        "serve",
        "--config",
        str(RUN_DIR / "gateway.yaml"),
        log_path=logs / "gateway.log",
        env=traced,
    )

    redis.start()
    with services, worker, gateway:
        heading("Services")
        started = time.monotonic()
        worker.wait_http(f"{worker_url}/health", verify=client_context(mtls))
        row("worker (python -m backend)", f"{worker_url}  mTLS only, client allowlist: warden-gateway")
        gateway.wait_http(f"{gateway_url}/healthz")
        row("gateway (python -m gateway)", gateway_url)
        row("both up in", f"{time.monotonic() - started:.1f} s")

        heading("Gateway -> worker over mTLS (GET /readyz)")
        ready = httpx.get(f"{gateway_url}/readyz", timeout=10)
        for upstream in ready.json()["upstreams"]:
            for w in upstream["workers"]:
                state = "healthy" if w["healthy"] else "UNHEALTHY"
                row(f"upstream {upstream['name']}", f"{w['url']}  {state} ({w['detail']})")
        row("policy version", str(ready.json()["policy"]["version"]))
        row("gateway readiness", f"HTTP {ready.status_code} {ready.json()['status']}")

        heading("The worker refuses anyone without the gateway's client certificate")
        try:
            httpx.get(f"{worker_url}/health", verify=client_context(TlsFiles(ca=paths.ca_cert)), timeout=5)
            row("no client certificate", "ACCEPTED (unexpected)")
            failed = True
        except httpx.TransportError as exc:
            row("no client certificate", f"refused ({type(exc).__name__})")
            failed = False

        gateway_ok = run_gateway_demo(gateway_url, identity)
        worker_metrics = f"http://127.0.0.1:{worker_metrics_port}/metrics"
        run_worker_demo(worker_url, client_context(mtls), worker_metrics)
        observability_ok = run_observability_demo(
            gateway_url,
            f"http://127.0.0.1:{gateway_metrics_port}/metrics",
            worker_metrics,
            identity,
        )
        resilience_ok = run_resilience_demo(gateway_url, identity, redis, paths, worker_url)

        if args.keep:
            print("\nRunning; press Ctrl-C to stop (logs in run/demo/logs).")
            signal.sigwait({signal.SIGINT, signal.SIGTERM})
        heading("Shutting down (graceful drain)")
    redis.stop()
    audit_ok = run_audit_demo(RUN_DIR)
    row("logs", str(logs))
    healthy = gateway_ok and audit_ok and observability_ok and resilience_ok and ready.status_code == 200
    return 1 if failed or not healthy else 0


if __name__ == "__main__":
    sys.exit(main())
