"""The servers around the gateway in ``bench.gateway_overhead``: a fast mock worker and the floor.

python -m bench._mock_upstream mock --pki DIR --tls-port N --plain-port M [--model NAME]
python -m bench._mock_upstream floor --pki DIR --port N --upstream https://localhost:M

``mock`` answers like an OpenAI-compatible worker with a small fixed chat completion (SSE when
``"stream": true``), on an mTLS port (the worker certificate; client certificates from the CA
required) and on a plain-HTTP port for the direct baseline, from one process.
``floor`` is the least a Python proxy can do: Starlette forwarding each body to the mock over one
keep-alive mTLS ``httpx`` client, with no authentication and no policy.
Both run on uvicorn with httptools and uvloop and no access log, as the gateway does.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import uvicorn
import uvloop
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from gateway.pki import PkiPaths
from gateway.serving import serve
from gateway.tls import TlsFiles, client_context, server_context

CREATED = 1_700_000_000
CONTENT = ("Hello", " from", " the", " mock", " upstream.")
USAGE = {"prompt_tokens": 9, "completion_tokens": len(CONTENT), "total_tokens": 9 + len(CONTENT)}


def _json(value: object) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def completion_body(model: str) -> bytes:
    return _json(
        {
            "id": "chatcmpl-bench",
            "object": "chat.completion",
            "created": CREATED,
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "".join(CONTENT)},
                    "finish_reason": "stop",
                }
            ],
            "usage": USAGE,
        }
    )


def stream_events(model: str) -> list[bytes]:
    """The SSE events of the same completion: a role delta, one delta per piece, finish, usage."""

    def chunk(delta: dict[str, str], finish: str | None = None, usage: object = None) -> bytes:
        choices = [{"index": 0, "delta": delta, "finish_reason": finish}] if delta or finish else []
        body = {"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": CREATED}
        body |= {"model": model, "choices": choices}
        if usage is not None:
            body["usage"] = usage
        return b"data: " + _json(body) + b"\n\n"

    return [
        chunk({"role": "assistant", "content": ""}),
        *(chunk({"content": piece}) for piece in CONTENT),
        chunk({}, finish="stop"),
        chunk({}, usage=USAGE),
        b"data: [DONE]\n\n",
    ]


def mock_app(model: str) -> Starlette:
    completion = completion_body(model)
    events = stream_events(model)
    models = _json({"object": "list", "data": [{"id": model, "object": "model", "owned_by": "bench"}]})

    async def chat(request: Request) -> Response:
        try:
            stream = json.loads(await request.body()).get("stream") is True
        except (ValueError, AttributeError):
            return Response(b'{"error":{"message":"invalid JSON body"}}', 400, media_type="application/json")
        if stream:

            async def body() -> AsyncIterator[bytes]:
                for event in events:
                    yield event

            return StreamingResponse(body(), media_type="text/event-stream")
        return Response(completion, media_type="application/json")

    async def list_models(_request: Request) -> Response:
        return Response(models, media_type="application/json")

    async def health(_request: Request) -> Response:
        return Response(b'{"status":"ok"}', media_type="application/json")

    return Starlette(
        routes=[
            Route("/v1/chat/completions", chat, methods=["POST"]),
            Route("/v1/models", list_models),
            Route("/health", health),
        ]
    )


def floor_app(upstream: str, pki: PkiPaths) -> Starlette:
    files = TlsFiles(ca=pki.ca_cert, cert=pki.gateway_cert, key=pki.gateway_key)
    clients: list[httpx.AsyncClient] = []

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        limits = httpx.Limits(max_connections=256, max_keepalive_connections=256)
        async with httpx.AsyncClient(
            base_url=upstream, verify=client_context(files), limits=limits, timeout=30, trust_env=False
        ) as client:
            clients.append(client)
            yield

    async def forward(request: Request) -> Response:
        body = await request.body()
        headers = {"content-type": "application/json"} if body else {}
        reply = await clients[0].request(request.method, request.url.path, content=body, headers=headers)
        media_type = reply.headers.get("content-type", "application/json")
        return Response(reply.content, reply.status_code, media_type=media_type)

    return Starlette(
        routes=[
            Route("/v1/chat/completions", forward, methods=["POST"]),
            Route("/v1/models", forward),
            Route("/health", forward),
        ],
        lifespan=lifespan,
    )


class _Server(uvicorn.Server):
    """A uvicorn server that leaves signals to its caller, so one process can run several."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _config(app: Starlette, port: int, files: TlsFiles | None) -> uvicorn.Config:
    context = server_context(files, require_client_cert=True) if files else None
    return uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        http="httptools",
        lifespan="off",
        access_log=False,
        server_header=False,
        log_config=None,
        log_level="warning",
        ssl_context_factory=(lambda _config, _default: context) if context is not None else None,
    )


async def _serve_mock(model: str, tls_port: int, plain_port: int, pki: PkiPaths) -> None:
    app = mock_app(model)
    files = TlsFiles(ca=pki.ca_cert, cert=pki.worker_cert, key=pki.worker_key)
    servers = [_Server(_config(app, tls_port, files)), _Server(_config(app, plain_port, None))]

    def stop() -> None:
        for server in servers:
            server.should_exit = True

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop)
    await asyncio.gather(*(server.serve() for server in servers))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench._mock_upstream", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    mock = commands.add_parser("mock", help="the fast mock worker (mTLS and plain HTTP)")
    mock.add_argument("--pki", type=Path, required=True, help="directory written by gateway.pki.init_pki")
    mock.add_argument("--tls-port", type=int, required=True)
    mock.add_argument("--plain-port", type=int, required=True)
    mock.add_argument("--model", default="mock-model")
    floor = commands.add_parser("floor", help="a bare Starlette + httpx pass-through to the mock")
    floor.add_argument("--pki", type=Path, required=True)
    floor.add_argument("--port", type=int, required=True)
    floor.add_argument("--upstream", required=True, help="the mock's mTLS base URL")
    args = parser.parse_args(argv)
    pki = PkiPaths(args.pki)
    if args.command == "mock":
        uvloop.run(_serve_mock(args.model, args.tls_port, args.plain_port, pki))
    else:
        app = floor_app(args.upstream, pki)
        serve(
            app,
            host="127.0.0.1",
            port=args.port,
            ssl_context=None,
            graceful_shutdown_s=1,
            log_level="warning",
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
