"""The real gateway in a subprocess, configured by a test: issuers, a policy directory, upstreams."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from gateway.pki import PkiPaths
from tests.support.ports import free_port
from tests.support.processes import ServiceProcess


def upstream(pki: PkiPaths, name: str, models: list[str], workers: list[str], **extra: Any) -> dict[str, Any]:
    """An ``upstreams`` entry that reaches ``workers`` over mTLS with the gateway's client certificate."""
    return {
        "name": name,
        "models": models,
        "workers": workers,
        "tls": {"ca": str(pki.ca_cert), "cert": str(pki.gateway_cert), "key": str(pki.gateway_key)},
        **extra,
    }


def start_gateway(
    directory: Path, *, issuers: list[dict[str, Any]], policy_dir: Path, upstreams: list[dict[str, Any]],
    file_size_limit: int | None = None, env: dict[str, str] | None = None, **extra: Any,
) -> tuple[ServiceProcess, str]:  # fmt: skip
    """Write the settings file, start ``python -m gateway serve`` and wait for /healthz.

    ``env`` adds variables to the gateway's environment (``OTEL_*`` for tracing, for one).

    Without a ``redis`` section the gateway points at a port where nothing listens: it runs
    degraded (cache bypassed, limits in process) and never touches a Redis of the machine's.
    """
    extra.setdefault("redis", {"url": f"redis://127.0.0.1:{free_port()}/0"})
    port = free_port()
    config = {
        "port": port,
        "auth": {"issuers": issuers},
        "policy_dir": str(policy_dir),
        "policy_reload_interval_s": 0.2,
        "upstreams": upstreams,
        **extra,
    }
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"gateway-{port}.json"
    path.write_text(json.dumps(config))
    log_path = directory / f"gateway-{port}.log"
    if file_size_limit is None:
        process = ServiceProcess.python_module(
            "gateway", "serve", "--config", str(path), log_path=log_path, env=env
        )
    else:
        # A full disk, as the gateway sees it: writes past the limit fail with EFBIG (Python ignores
        # SIGXFSZ), for the audit segments and everything else the process writes.
        launcher = (
            "import resource, runpy, sys; "
            f"resource.setrlimit(resource.RLIMIT_FSIZE, ({file_size_limit}, {file_size_limit})); "
            "sys.argv = ['gateway', *sys.argv[1:]]; runpy.run_module('gateway', run_name='__main__')"
        )
        args = [sys.executable, "-c", launcher, "serve", "--config", str(path)]
        process = ServiceProcess(args, log_path=log_path, env=env)
    process.start()
    url = f"http://127.0.0.1:{port}"
    process.wait_http(f"{url}/healthz", timeout_s=60)
    return process, url
