"""A real, throwaway redis-server on a free port: no persistence, its own directory, stopped after use."""

from __future__ import annotations

import shutil
import socket
import time
from pathlib import Path

from tests.support.ports import free_port
from tests.support.processes import ServiceProcess


def _ping(port: int) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
        sock.sendall(b"PING\r\n")
        return sock.recv(16).startswith(b"+PONG")


class RedisServer:
    def __init__(self, directory: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError(
                "redis-server is not installed; `make test` installs it (see scripts/bootstrap.sh)"
            )
        self.directory = directory
        self.port = free_port()
        self.service = ServiceProcess(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(directory),
                "--protected-mode",
                "yes",
            ],
            log_path=directory / "redis.log",
        )

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.service.start()
        self.service.wait_until(lambda: _ping(self.port), timeout_s=10)
        return self

    def stop(self) -> None:
        self.service.stop()

    def restart(self) -> None:
        """Stop and start on the same port (for fault tests); data is gone, as with a real crash."""
        self.stop()
        time.sleep(0.05)
        self.start()
