"""A closed-loop HTTP/1.1 load generator that stays cheap on CPU.

It shares the machine with the servers it measures, so it does as little as it can per request:
one pre-encoded request, raw keep-alive connections (``asyncio.Protocol``, no streams, no
coroutine per request), and a parser that reads only the status line, the framing headers and
the chunk sizes. Each connection sends its next request from ``data_received`` the moment the
previous response is complete.
"""

from __future__ import annotations

import asyncio
import math
import ssl
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import cast
from urllib.parse import urlsplit

from bench._common import percentile


class ProtocolError(Exception):
    """The server sent something this parser does not accept."""


@dataclass(frozen=True, slots=True)
class Endpoint:
    host: str
    port: int
    tls: bool
    path: str


def parse_url(url: str) -> Endpoint:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"expected an http:// or https:// URL, got {url!r}")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return Endpoint(parts.hostname, port, parts.scheme == "https", parts.path or "/")


def build_request(url: str, body: bytes, headers: Mapping[str, str] | None = None) -> tuple[Endpoint, bytes]:
    """The endpoint and the exact bytes of one keep-alive ``POST`` of a JSON ``body`` to ``url``."""
    endpoint = parse_url(url)
    host = urlsplit(url).netloc.rpartition("@")[2]
    lines = [
        f"POST {endpoint.path} HTTP/1.1",
        f"Host: {host}",
        "Content-Type: application/json",
        f"Content-Length: {len(body)}",
        *(f"{name}: {value}" for name, value in (headers or {}).items()),
    ]
    for line in lines:
        if "\r" in line or "\n" in line:
            raise ValueError("header names and values must not contain line breaks")
    return endpoint, "\r\n".join(lines).encode("latin-1") + b"\r\n\r\n" + body


class ResponseParser:
    """Incremental parser for a sequence of HTTP/1.1 responses (Content-Length or chunked bodies).

    ``feed`` returns the status codes of the responses completed by the new bytes. Bodies are
    skipped, never copied out.
    """

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._status = 0  # 0 while waiting for a head
        self._length = 0  # body bytes still expected (Content-Length framing)
        self._chunked = False
        self._scan = 0  # chunked: where the next chunk-size line starts

    def feed(self, data: bytes) -> list[int]:
        buffer = self._buffer
        buffer += data
        done: list[int] = []
        while True:
            if not self._status and not self._read_head():
                return done
            end = self._chunked_end() if self._chunked else self._length
            if end < 0 or len(buffer) < end:
                return done
            del buffer[:end]
            done.append(self._status)
            self._status = 0

    def _read_head(self) -> bool:
        buffer = self._buffer
        end = buffer.find(b"\r\n\r\n")
        if end < 0:
            return False
        head = bytes(buffer[:end]).lower()
        del buffer[: end + 4]
        if not head.startswith(b"http/1."):
            raise ProtocolError(f"not an HTTP/1.x status line: {head[:40]!r}")
        status = int(head[9:12])
        self._chunked, self._length, self._scan = False, 0, 0
        if status in (204, 304) or 100 <= status < 200:
            pass
        elif (at := head.find(b"\r\ncontent-length:")) >= 0:
            stop = head.find(b"\r\n", at + 2)
            self._length = int(head[at + 17 : stop if stop >= 0 else None])
        elif (at := head.find(b"\r\ntransfer-encoding:")) >= 0 and b"chunked" in head[at:].split(b"\r\n")[1]:
            self._chunked = True
        else:
            raise ProtocolError("a response without Content-Length or chunked framing")
        if 100 <= status < 200:
            return self._read_head()  # an interim response: the real one follows
        self._status = status
        return True

    def _chunked_end(self) -> int:
        """The end offset of a complete chunked body in the buffer, or -1 if more bytes are needed."""
        buffer = self._buffer
        while True:
            line_end = buffer.find(b"\r\n", self._scan)
            if line_end < 0:
                return -1
            size = int(bytes(buffer[self._scan : line_end]).split(b";")[0], 16)
            if size == 0:
                # The last chunk, then optional trailer lines, then an empty line.
                if buffer[line_end + 2 : line_end + 4] == b"\r\n":
                    return line_end + 4
                trailer_end = buffer.find(b"\r\n\r\n", line_end)
                return trailer_end + 4 if trailer_end >= 0 else -1
            following = line_end + 2 + size + 2
            if len(buffer) < following:
                return -1
            self._scan = following


@dataclass(frozen=True, slots=True)
class LoadResult:
    """One measured window: every response completed inside it, whatever its status."""

    concurrency: int
    duration_s: float
    requests: int
    errors: int  # non-200 responses and dropped requests, warm-up included
    latencies_ns: list[int]

    @property
    def rps(self) -> float:
        return self.requests / self.duration_s

    def latency_ms(self, q: float) -> float:
        if not self.latencies_ns:
            return math.nan
        return percentile(self.latencies_ns, q) / 1e6


class _Run:
    """State shared by a run's connections."""

    def __init__(self, request: bytes) -> None:
        self.request = request
        self.recording = False
        self.stopping = False
        self.latencies: list[int] = []
        self.errors = 0
        self.in_flight = 0
        self.idle = asyncio.Event()

    def send(self, connection: _Connection) -> None:
        self.in_flight += 1
        connection.sent_at = time.perf_counter_ns()
        connection.transport.write(self.request)

    def finished(self, connection: _Connection, status: int) -> None:
        self.in_flight -= 1
        if self.recording:
            self.latencies.append(time.perf_counter_ns() - connection.sent_at)
        if status != 200:
            self.errors += 1
        if not self.stopping:
            self.send(connection)
        elif not self.in_flight:
            self.idle.set()

    def dropped(self) -> None:
        self.in_flight -= 1
        self.errors += 1
        if self.stopping and not self.in_flight:
            self.idle.set()


class _Connection(asyncio.Protocol):
    def __init__(self, run: _Run) -> None:
        self.run = run
        self.parser = ResponseParser()
        self.transport: asyncio.Transport
        self.sent_at = 0
        self.waiting = False  # a request is in flight
        self.lost = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def start(self) -> None:
        self.waiting = True
        self.run.send(self)

    def data_received(self, data: bytes) -> None:
        try:
            statuses = self.parser.feed(data)
        except (ProtocolError, ValueError):
            self.transport.abort()
            return
        for status in statuses:
            self.waiting = not self.run.stopping  # finished() sends the next request unless stopping
            self.run.finished(self, status)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.waiting:
            self.waiting = False
            self.run.dropped()
        if not self.lost.done():
            self.lost.set_result(None)


async def run_load(
    endpoint: Endpoint,
    request: bytes,
    *,
    concurrency: int,
    duration_s: float,
    warmup_s: float,
    ssl_context: ssl.SSLContext | None = None,
    on_window: Callable[[bool], None] = lambda _start: None,
) -> LoadResult:
    """Keep ``concurrency`` requests in flight for ``warmup_s`` then ``duration_s``; measure the latter.

    ``on_window(True)`` and ``on_window(False)`` run right at the start and end of the measured
    window (to read the server's CPU time). A connection the server closes is reopened.
    """
    loop = asyncio.get_running_loop()
    run = _Run(request)
    context = (ssl_context or ssl.create_default_context()) if endpoint.tls else None
    hostname = endpoint.host if endpoint.tls else None
    connections: list[_Connection] = []

    async def connect() -> _Connection:
        _, protocol = await loop.create_connection(
            lambda: _Connection(run), endpoint.host, endpoint.port, ssl=context, server_hostname=hostname
        )
        connections.append(protocol)
        return protocol

    async def keep_open(connection: _Connection) -> None:
        while True:
            await connection.lost
            if run.stopping:
                return
            connection = await connect()
            connection.start()

    keepers: list[asyncio.Task[None]] = []
    try:
        opened = await asyncio.gather(*(connect() for _ in range(concurrency)))
        for connection in opened:
            connection.start()
            keepers.append(asyncio.create_task(keep_open(connection)))
        await asyncio.sleep(warmup_s)
        run.recording = True
        on_window(True)
        started = time.perf_counter()
        await asyncio.sleep(duration_s)
        run.recording = False
        on_window(False)
        elapsed = time.perf_counter() - started
        run.stopping = True
        if run.in_flight:
            await asyncio.wait_for(run.idle.wait(), timeout=30)
    finally:
        run.stopping = True
        for task in keepers:
            task.cancel()
        for connection in connections:
            connection.transport.close()
        await asyncio.gather(*(c.lost for c in connections), *keepers, return_exceptions=True)
    return LoadResult(concurrency, elapsed, len(run.latencies), run.errors, run.latencies)
