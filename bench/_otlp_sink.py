"""A minimal OTLP/HTTP trace receiver for the benchmarks: accepts ``POST /v1/traces`` and counts spans.

python -m bench._otlp_sink --port PORT   (``GET /stats``: {"requests": n, "spans": n, "traces": n})

It stands in for an OpenTelemetry collector so that the gateway's exporter does its real work
(batching, protobuf encoding, HTTP) while the benchmark measures what that costs the gateway.
"""

from __future__ import annotations

import argparse

import uvicorn
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route


def build_app() -> Starlette:
    counts = {"requests": 0, "spans": 0, "traces": 0}
    reply = ExportTraceServiceResponse().SerializeToString()

    async def traces(request: Request) -> Response:
        export = ExportTraceServiceRequest()
        export.ParseFromString(await request.body())
        counts["requests"] += 1
        spans = [span for r in export.resource_spans for s in r.scope_spans for span in s.spans]
        counts["spans"] += len(spans)
        counts["traces"] += sum(1 for span in spans if not span.parent_span_id)  # root spans
        return Response(reply, media_type="application/x-protobuf")

    async def stats(_request: Request) -> JSONResponse:
        return JSONResponse(counts)

    routes = [Route("/v1/traces", traces, methods=["POST"]), Route("/stats", stats), Route("/health", stats)]
    return Starlette(routes=routes)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench._otlp_sink")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    uvicorn.run(build_app(), host="127.0.0.1", port=args.port, log_level="warning")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
