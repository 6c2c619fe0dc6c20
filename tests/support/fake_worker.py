"""A stand-in OpenAI-compatible worker over mTLS for tests whose subject is the gateway.

``python -m tests.support.fake_worker --port P --cert C --key K --ca CA --name NAME``. It echoes
what it received (body and the headers the gateway should or should not forward) so tests can
check what left the gateway. The request's ``user`` field selects a behaviour:
``"cut-after-2"`` aborts the stream after two events, ``"slow"`` waits 30 s before answering,
``"fail-500"`` answers 500, ``"busy"`` answers 503, ``"queue-full"`` answers 429 with Retry-After,
``"slow-stream"`` spaces its events 0.5 s apart, ``"pii"`` answers with personal data (PII_TEXT),
streamed five characters per event.
``/stats`` counts requests and the clients that went away before the answer was complete.
With ``--api-key`` it plays a worker that is not ours: server-only TLS and a bearer key.
"""

from __future__ import annotations

import argparse
import asyncio
import hmac
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from gateway.serving import serve
from gateway.tls import TlsFiles, server_context

MODEL = "fake-model"
# The answer for ``user: "pii"``: personal data that the gateway must redact, streamed in small pieces.
PII_TEXT = "Write to jane.roe@example.com or call +1 415 555 0100; card 4111 1111 1111 1111."
FORWARDED = ("authorization", "traceparent", "x-request-id", "cookie")


class StreamCut(Exception):
    """Raised inside a stream so that the server drops the connection mid-response."""


def build_app(name: str, event_delay_s: float, api_key: str | None = None) -> Starlette:
    counter = {"requests": 0, "disconnects": 0}

    async def health(_request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok", "worker": name})

    async def models(_request: Request) -> JSONResponse:
        return JSONResponse({"object": "list", "data": [{"id": MODEL, "object": "model"}]})

    async def stats(_request: Request) -> JSONResponse:
        return JSONResponse(counter)

    async def completion(request: Request) -> Response:
        if api_key is not None:
            presented = request.headers.get("authorization", "").encode()
            if not hmac.compare_digest(presented, f"Bearer {api_key}".encode()):
                return JSONResponse({"error": {"message": "bad key", "type": "auth"}}, status_code=401)
        counter["requests"] += 1
        body: dict[str, Any] = await request.json()
        echo = {
            "worker": name,
            "body": body,
            "headers": {h: request.headers.get(h) for h in FORWARDED},
        }
        behaviour = body.get("user")
        if behaviour == "fail-500":
            return JSONResponse({"error": {"message": "boom", "type": "server_error"}}, status_code=500)
        if behaviour == "busy":
            return JSONResponse({"error": {"message": "busy", "type": "server_error"}}, status_code=503)
        if behaviour == "queue-full":
            error = {
                "message": "the worker is busy; retry later",
                "type": "rate_limit_error",
                "code": "queue_full",
            }
            return JSONResponse({"error": error}, status_code=429, headers={"Retry-After": "3"})
        if behaviour == "slow":
            for _ in range(600):
                if await request.is_disconnected():
                    counter["disconnects"] += 1
                    return Response(status_code=499)
                await asyncio.sleep(0.05)
        if body.get("stream"):
            stream = pii_events() if behaviour == "pii" else events(echo, behaviour)
            return StreamingResponse(stream, media_type="text/event-stream")
        content = PII_TEXT if behaviour == "pii" else "hello"
        answer = {
            "id": "cmpl-fake",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model"),
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}
            ],
            "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
            "echo": echo,
        }
        return JSONResponse(answer)

    async def events(echo: dict[str, Any], behaviour: object) -> AsyncIterator[bytes]:
        delay = 0.5 if behaviour == "slow-stream" else event_delay_s
        complete = False
        try:
            for index in range(5):
                if behaviour == "cut-after-2" and index == 2:
                    raise StreamCut
                chunk = {
                    "object": "chat.completion.chunk",
                    "index": index,
                    "sent_at": time.time(),
                    "echo": echo,
                }
                yield f"data: {json.dumps(chunk)}\n\n".encode()
                await asyncio.sleep(delay)
            yield b"data: [DONE]\n\n"
            complete = True
        finally:
            if not complete and behaviour != "cut-after-2":
                counter["disconnects"] += 1

    async def pii_events() -> AsyncIterator[bytes]:
        for start in range(0, len(PII_TEXT), 5):
            delta = {"index": 0, "delta": {"content": PII_TEXT[start : start + 5]}, "finish_reason": None}
            yield f"data: {json.dumps({'object': 'chat.completion.chunk', 'choices': [delta]})}\n\n".encode()
            await asyncio.sleep(0.002)
        last = {"index": 0, "delta": {}, "finish_reason": "stop"}
        yield f"data: {json.dumps({'object': 'chat.completion.chunk', 'choices': [last]})}\n\n".encode()
        yield b"data: [DONE]\n\n"

    return Starlette(
        routes=[
            Route("/health", health),
            Route("/v1/models", models),
            Route("/stats", stats),
            Route("/v1/chat/completions", completion, methods=["POST"]),
            Route("/v1/completions", completion, methods=["POST"]),
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--cert", type=Path, required=True)
    parser.add_argument("--key", type=Path, required=True)
    parser.add_argument("--ca", type=Path, required=True)
    parser.add_argument("--name", default="fake")
    parser.add_argument("--event-delay", type=float, default=0.05)
    parser.add_argument("--api-key", help="require this bearer key and no client certificate")
    args = parser.parse_args()
    mtls = args.api_key is None
    context = server_context(TlsFiles(ca=args.ca, cert=args.cert, key=args.key), require_client_cert=mtls)
    serve(
        build_app(args.name, args.event_delay, args.api_key),
        host="127.0.0.1",
        port=args.port,
        ssl_context=context,
        graceful_shutdown_s=1,
        log_level="warning",
    )


if __name__ == "__main__":
    main()


def start_fake_worker(
    cert: Path,
    key: Path,
    ca: Path,
    log_dir: Path,
    *,
    name: str,
    port: int | None = None,
    event_delay: float = 0.05,
    api_key: str | None = None,
) -> tuple[Any, str]:
    """Launch one in a subprocess (the caller waits for readiness); returns (process, url)."""
    from tests.support.ports import free_port
    from tests.support.processes import ServiceProcess

    port = port or free_port()
    process = ServiceProcess.python_module(
        "tests.support.fake_worker", "--port", str(port), "--cert", str(cert), "--key", str(key),
        "--ca", str(ca), "--name", name, "--event-delay", str(event_delay),
        *(["--api-key", api_key] if api_key else []),
        log_path=log_dir / f"fake-{name}-{port}.log",
    ).start()  # fmt: skip
    return process, f"https://localhost:{port}"
