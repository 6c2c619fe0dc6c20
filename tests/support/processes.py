"""Run a service in a subprocess and wait until it answers; stop it with SIGTERM (then SIGKILL)."""

from __future__ import annotations

import os
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType

import httpx


class ServiceProcess:
    def __init__(
        self,
        args: Sequence[str],
        *,
        log_path: Path,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.args = list(args)
        self.log_path = log_path
        self.env = {**os.environ, **(env or {})}
        self.cwd = cwd
        self.process: subprocess.Popen[bytes] | None = None

    @classmethod
    def python_module(cls, module: str, *args: str, log_path: Path, **kwargs: object) -> ServiceProcess:
        return cls([sys.executable, "-m", module, *args], log_path=log_path, **kwargs)  # type: ignore[arg-type]

    def start(self) -> ServiceProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            self.args, stdout=log, stderr=subprocess.STDOUT, env=self.env, cwd=self.cwd
        )
        log.close()
        return self

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_until(self, ready: Callable[[], bool], timeout_s: float = 30.0) -> None:
        """Poll ``ready`` until it returns True; fail with the process log if it exits or times out."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"{self.args[:4]} exited with {self.process.returncode}:\n{self.logs()}")
            try:
                if ready():
                    return
            except (httpx.HTTPError, OSError, ssl.SSLError):
                pass
            time.sleep(0.05)
        self.kill()  # a service that never became ready must not outlive the test that started it
        raise TimeoutError(f"{self.args[:4]} not ready after {timeout_s}s:\n{self.logs()}")

    def wait_http(self, url: str, *, verify: ssl.SSLContext | bool = True, timeout_s: float = 30.0) -> None:
        def ready() -> bool:
            return httpx.get(url, verify=verify, timeout=1.0).status_code < 500

        self.wait_until(ready, timeout_s)

    def stop(self, timeout_s: float = 15.0) -> int | None:
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else None
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait(5)

    def kill(self) -> None:
        """SIGKILL: the process gets no chance to drain or clean up."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(5)

    def __enter__(self) -> ServiceProcess:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
