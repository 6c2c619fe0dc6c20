"""A real, throwaway redis-server on a free port: no persistence, its own directory, stopped after use.

Optionally TLS only (``tls``: the server's certificate, key and the CA of its clients) and ACL
users (``users``: name to password; the passwordless default user is then switched off).
"""

from __future__ import annotations

import shutil
import signal
import socket
import ssl
import time
from collections.abc import Mapping
from pathlib import Path

from gateway.tls import TlsFiles
from tests.support.ports import free_port
from tests.support.processes import ServiceProcess


def _ping(port: int, tls: bool) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=0.5) as raw:
        if not tls:
            return _pong(raw)
        # Readiness only: the tests themselves verify the certificate.
        context = ssl.create_default_context()
        context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
        with context.wrap_socket(raw) as sock:
            return _pong(sock)


def _pong(sock: socket.socket) -> bool:
    sock.sendall(b"PING\r\n")
    # With the default user off, an unauthenticated PING is refused: the server is up all the same.
    return sock.recv(16).startswith((b"+PONG", b"-NOAUTH"))


class RedisServer:
    def __init__(
        self, directory: Path, *, tls: TlsFiles | None = None, users: Mapping[str, str] | None = None
    ) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError(
                "redis-server is not installed; `make test` installs it (see scripts/bootstrap.sh)"
            )
        self.directory = directory
        self.port = free_port()
        self.tls = tls
        options: list[str] = []
        if tls is not None:
            if tls.cert is None or tls.key is None or tls.ca is None:
                raise ValueError("a TLS redis-server needs cert, key and ca")
            options += ["--port", "0", "--tls-port", str(self.port)]
            options += ["--tls-cert-file", str(tls.cert), "--tls-key-file", str(tls.key)]
            options += ["--tls-ca-cert-file", str(tls.ca), "--tls-auth-clients", "no"]
        for name, password in (users or {}).items():
            options += ["--user", name, "on", f">{password}", "~*", "&*", "+@all"]
        if users:
            options += ["--user", "default", "off"]
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
                *options,
            ],
            log_path=directory / "redis.log",
        )

    @property
    def url(self) -> str:
        if self.tls is not None:
            return f"rediss://localhost:{self.port}/0"
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.service.start()
        self.service.wait_until(lambda: _ping(self.port, self.tls is not None), timeout_s=10)
        return self

    def stop(self) -> None:
        self.service.stop()

    def kill(self) -> None:
        """SIGKILL, as a crash: clients see their connections reset and new ones refused."""
        self.service.kill()

    def pause(self) -> None:
        """SIGSTOP: connections stay open but nothing answers, as with a hung server or a partition."""
        self._signal(signal.SIGSTOP)

    def resume(self) -> None:
        self._signal(signal.SIGCONT)

    def _signal(self, number: signal.Signals) -> None:
        if self.service.process is None or self.service.process.poll() is not None:
            raise RuntimeError("redis-server is not running")
        self.service.process.send_signal(number)

    def restart(self) -> None:
        """Stop and start on the same port (for fault tests); data is gone, as with a real crash."""
        self.stop()
        time.sleep(0.05)
        self.start()
