"""An OpenAI-compatible stand-in worker over mTLS whose answers the official SDK parses, for the docs.

``python -m tests.docs.sdk_worker --port P --cert C --key K --ca CA``. The guides' SDK examples read
``choices[0].message.content``, ``choices[0].delta.content`` and ``choices[0].text``, so unlike
``tests.support.fake_worker`` (which echoes what reached it) this one answers in the exact shapes of
the chat and completions APIs, streamed or not, with ``usage`` and the usage chunk when asked for.
It serves any model name it is sent; the gateway decides which names reach it.
"""

from __future__ import annotations

import argparse
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
from tests.support.ports import free_port
from tests.support.processes import ServiceProcess

ANSWER = "Sunlight is scattered by the air, and blue light is scattered the most."
PIECES = 4


def _usage(body: dict[str, Any]) -> dict[str, int]:
    completion = len(ANSWER.split()) * int(body.get("n") or 1)
    return {"prompt_tokens": 12, "completion_tokens": completion, "total_tokens": 12 + completion}


def _whole(kind: str, body: dict[str, Any]) -> dict[str, Any]:
    choices: list[dict[str, Any]] = []
    for index in range(int(body.get("n") or 1)):
        if kind == "chat":
            message = {"role": "assistant", "content": ANSWER}
            choices.append({"index": index, "message": message, "finish_reason": "stop", "logprobs": None})
        else:
            choices.append({"index": index, "text": ANSWER, "finish_reason": "stop", "logprobs": None})
    return {
        "id": f"{kind}-docs",
        "object": "chat.completion" if kind == "chat" else "text_completion",
        "created": int(time.time()),
        "model": body.get("model"),
        "choices": choices,
        "usage": _usage(body),
    }


async def _events(kind: str, body: dict[str, Any]) -> AsyncIterator[bytes]:
    base = {
        "id": f"{kind}-docs",
        "object": "chat.completion.chunk" if kind == "chat" else "text_completion",
        "created": int(time.time()),
        "model": body.get("model"),
    }
    words = ANSWER.split(" ")
    step = -(-len(words) // PIECES)
    pieces = [" ".join(words[i : i + step]) + " " for i in range(0, len(words), step)]
    pieces[-1] = pieces[-1].rstrip()
    for number, piece in enumerate(pieces):
        finish = "stop" if number == len(pieces) - 1 else None
        choices = []
        for index in range(int(body.get("n") or 1)):
            if kind == "chat":
                delta: dict[str, Any] = {"content": piece}
                if number == 0:
                    delta["role"] = "assistant"
                choices.append({"index": index, "delta": delta, "finish_reason": finish, "logprobs": None})
            else:
                choices.append({"index": index, "text": piece, "finish_reason": finish, "logprobs": None})
        yield f"data: {json.dumps({**base, 'choices': choices})}\n\n".encode()
    if (body.get("stream_options") or {}).get("include_usage"):
        yield f"data: {json.dumps({**base, 'choices': [], 'usage': _usage(body)})}\n\n".encode()
    yield b"data: [DONE]\n\n"


def build_app() -> Starlette:
    async def health(_request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    async def models(_request: Request) -> JSONResponse:
        return JSONResponse({"object": "list", "data": []})

    def completion(kind: str) -> Any:
        async def route(request: Request) -> Response:
            body: dict[str, Any] = await request.json()
            if body.get("stream"):
                return StreamingResponse(_events(kind, body), media_type="text/event-stream")
            return JSONResponse(_whole(kind, body))

        return route

    return Starlette(
        routes=[
            Route("/health", health),
            Route("/v1/models", models),
            Route("/v1/chat/completions", completion("chat"), methods=["POST"]),
            Route("/v1/completions", completion("text"), methods=["POST"]),
        ]
    )


def start_sdk_worker(cert: Path, key: Path, ca: Path, log_dir: Path) -> tuple[ServiceProcess, str]:
    """Launch one in a subprocess (the caller waits for readiness); returns (process, url)."""
    port = free_port()
    process = ServiceProcess.python_module(
        "tests.docs.sdk_worker", "--port", str(port), "--cert", str(cert), "--key", str(key),
        "--ca", str(ca), log_path=log_dir / f"sdk-worker-{port}.log",
    ).start()  # fmt: skip
    return process, f"https://localhost:{port}"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--cert", type=Path, required=True)
    parser.add_argument("--key", type=Path, required=True)
    parser.add_argument("--ca", type=Path, required=True)
    args = parser.parse_args()
    context = server_context(TlsFiles(ca=args.ca, cert=args.cert, key=args.key), require_client_cert=True)
    serve(build_app(), host="127.0.0.1", port=args.port, ssl_context=context, graceful_shutdown_s=1)


if __name__ == "__main__":
    main()
