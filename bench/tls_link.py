"""What mTLS costs on the gateway-worker link, side by side in one run.

The same worker binary serves plain HTTP (--insecure-dev) and mTLS; a client sends sequential
GET /health requests over keep-alive, and over a fresh connection per request (full handshake).
"""

from __future__ import annotations

import argparse
import json
import ssl
import statistics
import tempfile
import time
from pathlib import Path

import httpx

from gateway.pki import init_pki
from gateway.tls import TlsFiles, client_context
from tests.support.ports import free_port
from tests.support.processes import ServiceProcess


def measure(url: str, verify: ssl.SSLContext | bool, requests: int, keep_alive: bool) -> dict[str, float]:
    latencies: list[float] = []
    limits = httpx.Limits(max_keepalive_connections=1 if keep_alive else 0)
    with httpx.Client(verify=verify, limits=limits, timeout=10) as client:
        client.get(url).raise_for_status()  # warm-up (and the first handshake)
        started = time.perf_counter()
        for _ in range(requests):
            t0 = time.perf_counter()
            client.get(url).raise_for_status()
            latencies.append(time.perf_counter() - t0)
        elapsed = time.perf_counter() - started
    latencies.sort()
    return {
        "rps": requests / elapsed,
        "p50_ms": statistics.median(latencies) * 1000,
        "p99_ms": latencies[int(len(latencies) * 0.99) - 1] * 1000,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    requests = 300 if args.quick else 2000

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        paths, _ = init_pki(root / "pki")
        mtls = client_context(TlsFiles(ca=paths.ca_cert, cert=paths.gateway_cert, key=paths.gateway_key))
        plain_port, tls_port = free_port(), free_port()
        plain = ServiceProcess.python_module(
            "backend", "serve", "--insecure-dev", "--kv-cache-memory", "16", "--port", str(plain_port),
            log_path=root / "plain.log",
        )  # fmt: skip
        secure = ServiceProcess.python_module(
            "backend", "serve", "--port", str(tls_port), "--kv-cache-memory", "16",
            "--tls-cert", str(paths.worker_cert), "--tls-key", str(paths.worker_key),
            "--tls-ca", str(paths.ca_cert), log_path=root / "tls.log",
        )  # fmt: skip
        with plain, secure:
            plain_url = f"http://127.0.0.1:{plain_port}/health"
            tls_url = f"https://localhost:{tls_port}/health"
            plain.wait_http(plain_url)
            secure.wait_http(tls_url, verify=mtls)
            results = {
                "plain_keepalive": measure(plain_url, False, requests, keep_alive=True),
                "mtls_keepalive": measure(tls_url, mtls, requests, keep_alive=True),
                "mtls_new_connection": measure(tls_url, mtls, requests // 4, keep_alive=False),
            }

    base = results["plain_keepalive"]["rps"]
    print(f"{'link':<22}{'req/s':>10}{'p50 ms':>10}{'p99 ms':>10}{'vs plain':>10}")
    for name, r in results.items():
        print(f"{name:<22}{r['rps']:>10.0f}{r['p50_ms']:>10.2f}{r['p99_ms']:>10.2f}{r['rps'] / base:>10.2f}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
