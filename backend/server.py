"""The worker's OpenAI-compatible HTTP API over the async engine. Served over mTLS only (``backend.cli``).

Prometheus metrics are served at ``/metrics`` on the same port, or, with ``metrics_port`` set, over
plain HTTP on that port alone (Prometheus scrapes inside the cluster; the mTLS port stays for gateways).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from threading import Thread
from wsgiref.simple_server import WSGIServer

from prometheus_client import start_http_server
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from backend.async_engine import AsyncEngine, EngineOverloaded, EngineUnavailable
from backend.engine.llm_engine import EngineConfig, InvalidRequestError, LLMEngine
from backend.engine.output import RequestOutput
from backend.engine.sampling_params import SamplingParamsError
from backend.loader import ChatTemplateError
from backend.metrics import CONTENT_TYPE_LATEST, WorkerMetrics
from backend.openai_api import ChatCompletionRequest, CompletionRequest
from backend.responses import Kind, ResponseBuilder, sse
from backend.settings import WorkerSettings
from backend.telemetry import STATUS_CLIENT_CLOSED, RequestTelemetry, WorkerTelemetry
from gateway.bodies import parse_model, read_json
from gateway.errors import (
    ApiError,
    InvalidRequest,
    NotFound,
    RateLimited,
    ServiceUnavailable,
    error_body,
    install_error_handlers,
)
from gateway.tracing import Tracing

logger = logging.getLogger(__name__)

EngineFactory = Callable[[WorkerSettings], LLMEngine]

TRACE_FLUSH_TIMEOUT_MS = 5000


def load_engine(settings: WorkerSettings) -> LLMEngine:
    config = EngineConfig(
        dtype=settings.dtype,
        block_size=settings.block_size,
        kv_cache_memory_bytes=settings.kv_cache_memory_mb << 20,
        max_num_seqs=settings.max_num_seqs,
        max_num_batched_tokens=settings.max_num_batched_tokens,
    )
    return LLMEngine.from_model(settings.model, config, expected_sha256=settings.model_sha256)


@dataclass(slots=True)
class _State:
    engine: AsyncEngine | None = None


def create_app(
    settings: WorkerSettings,
    *,
    engine_factory: EngineFactory = load_engine,
    tracing: Tracing | None = None,
) -> Starlette:
    state = _State()
    model_name = settings.model_name
    metrics = WorkerMetrics(lambda: state.engine)
    telemetry = WorkerTelemetry(metrics, tracing, model_name)

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        # Started before the model loads, so that a scrape during a slow load still finds the process.
        metrics_server = _serve_metrics(metrics, settings) if settings.metrics_port is not None else None
        try:
            engine = await asyncio.to_thread(engine_factory, settings)
            state.engine = AsyncEngine(engine, max_waiting=settings.max_waiting)
            state.engine.start()
            logger.info("model ready", extra={"model": model_name, "kv_slots": engine.kv_capacity_tokens})
            try:
                yield
            finally:
                await state.engine.stop(settings.graceful_shutdown_s)
        finally:
            if metrics_server is not None:
                await asyncio.to_thread(_stop_metrics, *metrics_server)
            if tracing is not None:
                # uvicorn re-raises SIGTERM once it has stopped, which ends the process before the
                # caller's own cleanup runs: export the batched spans now.
                await asyncio.to_thread(tracing.flush, TRACE_FLUSH_TIMEOUT_MS)

    def running() -> AsyncEngine:
        if state.engine is None:
            raise ServiceUnavailable("the model is still loading", code="model_loading")
        return state.engine

    async def health(_request: Request) -> JSONResponse:
        if state.engine is None:
            return JSONResponse({"status": "loading", "model": model_name}, status_code=503)
        return JSONResponse({"status": "ok", "model": model_name})

    async def models(_request: Request) -> JSONResponse:
        card = {"id": model_name, "object": "model", "created": 0, "owned_by": "warden"}
        return JSONResponse({"object": "list", "data": [card]})

    async def metrics_endpoint(_request: Request) -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    async def chat_completions(request: Request) -> Response:
        call = telemetry.begin("/v1/chat/completions", "chat", request.headers)
        return await _observed(call, _chat(request, call))

    async def completions(request: Request) -> Response:
        call = telemetry.begin("/v1/completions", "text_completion", request.headers)
        return await _observed(call, _completion(request, call))

    async def _chat(request: Request, call: RequestTelemetry) -> Response:
        engine = running()
        body = parse_model(ChatCompletionRequest, await read_json(request, settings.max_body_bytes))
        _check_model(body.model, model_name)
        tokenizer = engine.engine.tokenizer
        try:
            text = tokenizer.apply_chat_template(body.template_messages(), add_generation_prompt=True)
        except ChatTemplateError:
            raise InvalidRequest("the messages cannot be rendered with the model's chat template") from None
        prompt = tokenizer.encode(text, add_special_tokens=False)
        return await _complete(request, call, engine, "chat", body, prompt)

    async def _completion(request: Request, call: RequestTelemetry) -> Response:
        engine = running()
        body = parse_model(CompletionRequest, await read_json(request, settings.max_body_bytes))
        _check_model(body.model, model_name)
        tokenizer = engine.engine.tokenizer
        if isinstance(body.prompt, str):
            prompt = tokenizer.encode(body.prompt)
        elif isinstance(body.prompt[0], str):
            prompt = tokenizer.encode(str(body.prompt[0]))
        else:
            prompt = [int(t) for t in body.prompt]
        return await _complete(request, call, engine, "completion", body, prompt)

    async def _complete(
        request: Request,
        call: RequestTelemetry,
        engine: AsyncEngine,
        kind: Kind,
        body: ChatCompletionRequest | CompletionRequest,
        prompt: list[int],
    ) -> Response:
        call.named(model_name, prompt_tokens=len(prompt), stream=body.stream)
        max_tokens = _max_tokens(
            engine.engine, len(prompt), body.requested_max_tokens(), settings.max_tokens_cap
        )
        logprobs = body.logprobs_count()
        try:
            params = body.sampling_params(max_tokens, logprobs)
        except SamplingParamsError as exc:
            raise InvalidRequest(str(exc)) from None
        request_id = f"{kind}-{uuid.uuid4().hex}"
        call.submitted(n=params.n)
        outputs = engine.generate(request_id, prompt, params, cache_salt=body.cache_salt)
        try:
            first = await anext(outputs)
        except EngineOverloaded as exc:
            raise RateLimited(
                "the worker is busy; retry later",
                code="queue_full",
                headers={"Retry-After": str(exc.retry_after_s)},
            ) from None
        except InvalidRequestError as exc:
            raise InvalidRequest(str(exc), code=exc.code) from None
        except EngineUnavailable as exc:
            raise ServiceUnavailable(str(exc)) from None
        token_text = _token_text(engine)
        builder = ResponseBuilder(kind, model_name, params.n, token_text)
        with_logprobs = logprobs is not None
        if body.stream:
            events = _stream_events(builder, call, first, outputs, with_logprobs, body.include_usage())
            return _ObservedStream(events, outputs, call)
        builder.add(first)
        call.observe(first)
        if not await _collect_unless_disconnected(request, builder, call, outputs):
            # nobody is left to read it; the request was aborted
            return Response(status_code=STATUS_CLIENT_CLOSED)
        return JSONResponse(builder.response(with_logprobs))

    routes = [
        Route("/health", health),
        Route("/v1/models", models),
        Route("/v1/chat/completions", chat_completions, methods=["POST"]),
        Route("/v1/completions", completions, methods=["POST"]),
    ]
    if settings.metrics_port is None:
        routes.append(Route("/metrics", metrics_endpoint))
    app = Starlette(routes=routes, lifespan=lifespan)
    install_error_handlers(app)
    return app


async def _observed(call: RequestTelemetry, handler: Awaitable[Response]) -> Response:
    """Run a completion handler and end its telemetry, unless a stream ends it later."""
    try:
        response = await handler
    except ApiError as exc:
        call.end(exc.status_code, error_type=exc.code)
        raise
    except HTTPException as exc:
        call.end(exc.status_code, error_type="http_error")
        raise
    except asyncio.CancelledError:
        call.end(STATUS_CLIENT_CLOSED)
        raise
    except Exception as exc:
        call.end(500, error_type=type(exc).__name__)
        raise
    if not isinstance(response, _ObservedStream):
        call.end(response.status_code)
    return response


class _ObservedStream(StreamingResponse):
    """An SSE response that, however it ends, aborts what is left of the request and ends its telemetry.

    A client that goes away mid-stream leaves the event generator suspended; closing it here (rather
    than when it is garbage-collected) aborts the request in the engine at once.
    """

    def __init__(
        self,
        events: AsyncGenerator[bytes, None],
        outputs: AsyncGenerator[RequestOutput, None],
        call: RequestTelemetry,
    ) -> None:
        super().__init__(events, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        self._events = events
        self._outputs = outputs
        self._call = call

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self._events.aclose()
            await self._outputs.aclose()
            self._call.end_stream()


def _serve_metrics(metrics: WorkerMetrics, settings: WorkerSettings) -> tuple[WSGIServer, Thread]:
    host, port = settings.metrics_host, settings.metrics_port or 0
    try:
        server, thread = start_http_server(port, addr=host, registry=metrics.registry)
    except OSError as exc:
        logger.error("cannot serve metrics", extra={"host": host, "port": port, "error": exc.strerror})
        raise
    logger.info("serving metrics", extra={"host": host, "port": server.server_port})
    return server, thread


def _stop_metrics(server: WSGIServer, thread: Thread) -> None:
    server.shutdown()
    server.server_close()
    thread.join(5.0)


def _check_model(requested: str, served: str) -> None:
    if requested != served:
        raise NotFound(
            f"the model {requested!r} is not served here (this worker serves {served!r})",
            code="model_not_found",
        )


def _max_tokens(engine: LLMEngine, prompt_len: int, requested: int | None, cap: int) -> int:
    available = engine.max_model_len - prompt_len
    if available <= 0:
        raise InvalidRequest(
            f"the prompt has {prompt_len} tokens; the model's context is {engine.max_model_len}",
            code="context_length_exceeded",
        )
    if requested is None:
        return min(available, cap)
    if requested > available:
        raise InvalidRequest(
            f"the prompt ({prompt_len} tokens) plus max_tokens ({requested}) exceeds the model's context "
            f"of {engine.max_model_len} tokens",
            code="context_length_exceeded",
        )
    if requested > cap:
        raise InvalidRequest(f"max_tokens is limited to {cap} per request on this worker", param="max_tokens")
    return requested


def _token_text(engine: AsyncEngine) -> Callable[[int], str]:
    tokenizer = engine.engine.tokenizer
    return lambda token_id: tokenizer.decode([token_id], skip_special_tokens=False)


async def _stream_events(
    builder: ResponseBuilder,
    call: RequestTelemetry,
    first: RequestOutput,
    outputs: AsyncIterator[RequestOutput],
    with_logprobs: bool,
    include_usage: bool,
) -> AsyncGenerator[bytes, None]:
    """SSE events; a failure after the first byte ends the stream with an error event, then [DONE]."""
    try:
        builder.add(first)
        call.observe(first)
        yield sse(builder.chunk(first, with_logprobs))
        async for out in outputs:
            builder.add(out)
            call.observe(out)
            yield sse(builder.chunk(out, with_logprobs))
        if include_usage:
            yield sse(builder.usage_chunk())
    except EngineUnavailable as exc:
        error = ServiceUnavailable(str(exc))
        call.stream_error = error.code
        yield sse(error_body(error.message, error.error_type, error.code))
    yield sse("[DONE]")


async def _collect_unless_disconnected(
    request: Request,
    builder: ResponseBuilder,
    call: RequestTelemetry,
    outputs: AsyncGenerator[RequestOutput, None],
) -> bool:
    """Gather every delta; False (and the generator closed, aborting the request) if the client left."""

    async def collect() -> None:
        async for out in outputs:
            builder.add(out)
            call.observe(out)

    async def disconnected() -> None:
        while True:
            message = await request.receive()
            if message["type"] == "http.disconnect":
                return

    collector = asyncio.ensure_future(collect())
    watcher = asyncio.ensure_future(disconnected())
    done, _ = await asyncio.wait({collector, watcher}, return_when=asyncio.FIRST_COMPLETED)
    if collector in done:
        watcher.cancel()
        exc = collector.exception()
        if isinstance(exc, EngineUnavailable):
            raise ServiceUnavailable(str(exc))
        if exc is not None:
            raise exc
        return True
    collector.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await collector
    await outputs.aclose()
    return False
