"""The real-component fixtures themselves: an isolated redis-server and service processes."""

from __future__ import annotations

import signal
import socket
import sys
import textwrap
import threading
import time
from pathlib import Path

import httpx
import redis

from tests.support.ports import free_port
from tests.support.processes import ServiceProcess
from tests.support.redis_server import RedisServer


def test_redis_fixture_is_a_private_server_without_persistence(redis_server: RedisServer) -> None:
    assert redis_server.port != 6379
    client = redis.Redis.from_url(redis_server.url)
    try:
        client.set("harness:key", "value")
        assert client.get("harness:key") == b"value"
        assert client.config_get("save")["save"] == ""
        assert client.config_get("appendonly")["appendonly"] == "no"
    finally:
        client.delete("harness:key")
        client.close()


def test_redis_restart_keeps_the_port_and_loses_the_data(tmp_path: Path) -> None:
    server = RedisServer(tmp_path).start()
    try:
        client = redis.Redis.from_url(server.url)
        client.set("k", "v")
        server.restart()
        client = redis.Redis.from_url(server.url)
        assert client.get("k") is None
        client.close()
    finally:
        server.stop()


SLOW_APP = textwrap.dedent(
    """
    import asyncio, sys
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route
    from gateway.serving import serve

    async def slow(request):
        await asyncio.sleep(1.5)
        return PlainTextResponse("finished")

    async def fast(request):
        return PlainTextResponse("up")

    app = Starlette(routes=[Route("/slow", slow), Route("/fast", fast)])
    serve(app, host="127.0.0.1", port=int(sys.argv[1]), ssl_context=None, graceful_shutdown_s=10)
    """
)


def test_graceful_shutdown_drains_in_flight_requests(tmp_path: Path) -> None:
    port = free_port()
    script = tmp_path / "slow_app.py"
    script.write_text(SLOW_APP)
    service = ServiceProcess([sys.executable, str(script), str(port)], log_path=tmp_path / "slow.log").start()
    base = f"http://127.0.0.1:{port}"
    try:
        service.wait_http(f"{base}/fast")
        results: list[str] = []
        thread = threading.Thread(target=lambda: results.append(httpx.get(f"{base}/slow", timeout=10).text))
        thread.start()
        time.sleep(0.3)  # the slow request is in flight
        # uvicorn re-raises the captured SIGTERM once drained; a SIGKILL would show as -9.
        assert service.stop(timeout_s=10) == -signal.SIGTERM
        thread.join(5)
        assert results == ["finished"]
        # and the server no longer accepts connections
        with socket.socket() as sock:
            assert sock.connect_ex(("127.0.0.1", port)) != 0
    finally:
        service.stop()
