"""The engine loop on its own thread, fed from asyncio: one queue of deltas per request.

The loop sleeps while idle and wakes at once on new work. A caller that stops listening (a client
disconnect cancels its generator) aborts its request, which the loop applies before the next step,
freeing every KV block the request held. Admission is bounded: beyond ``max_waiting`` queued
requests, ``generate`` raises ``EngineOverloaded`` so the server can answer 429 at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass

from backend.engine.llm_engine import LLMEngine
from backend.engine.output import RequestOutput
from backend.engine.sampling_params import SamplingParams

logger = logging.getLogger(__name__)

ADMISSION_WINDOW_S = 0.002


class EngineOverloaded(Exception):
    """The waiting queue is full; retry after ``retry_after_s``."""

    def __init__(self, retry_after_s: int) -> None:
        super().__init__("the worker's queue is full")
        self.retry_after_s = retry_after_s


class EngineUnavailable(Exception):
    """The engine cannot finish the request; the server answers 503 (or ends the stream with an error)."""


class EngineStopped(EngineUnavailable):
    """The engine is shutting down and takes no new requests."""


class EngineFailed(EngineUnavailable):
    """The engine loop failed while running the request (the request was aborted)."""


@dataclass(slots=True)
class _Submission:
    request_id: str
    prompt_token_ids: list[int]
    params: SamplingParams
    cache_salt: str | None
    arrival_time: float


_Item = RequestOutput | BaseException | None  # None marks the end of the request


@dataclass(slots=True)
class _Stream:
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue[_Item]


class AsyncEngine:
    def __init__(self, engine: LLMEngine, *, max_waiting: int = 256) -> None:
        self.engine = engine
        self.max_waiting = max_waiting
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._incoming: list[_Submission] = []
        self._aborts: set[str] = set()
        self._streams: dict[str, _Stream] = {}
        self._stopping = False
        self._abort_all = False
        self._thread = threading.Thread(target=self._run, name="engine-loop", daemon=True)
        self.num_steps = 0

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    async def stop(self, drain_timeout_s: float) -> None:
        """Stop taking requests, let running ones finish for up to ``drain_timeout_s``, abort the rest."""
        with self._lock:
            self._stopping = True
        self._wake.set()
        await asyncio.to_thread(self._thread.join, drain_timeout_s)
        if self._thread.is_alive():
            with self._lock:
                self._abort_all = True
            self._wake.set()
            await asyncio.to_thread(self._thread.join, 5.0)

    # -- requests ------------------------------------------------------------------------------

    @property
    def num_waiting(self) -> int:
        with self._lock:
            queued = len(self._incoming)
        return queued + len(self.engine.scheduler.waiting)

    async def generate(
        self,
        request_id: str,
        prompt_token_ids: list[int],
        params: SamplingParams,
        *,
        cache_salt: str | None = None,
    ) -> AsyncGenerator[RequestOutput, None]:
        """Yield the request's deltas as the engine produces them; abort it if the caller goes away."""
        self.engine.validate(prompt_token_ids, params)  # InvalidRequestError before anything is queued
        stream = _Stream(asyncio.get_running_loop(), asyncio.Queue())
        with self._lock:
            if self._stopping:
                raise EngineStopped("the worker is shutting down")
            waiting = len(self._incoming) + len(self.engine.scheduler.waiting)
            if waiting >= self.max_waiting:
                raise EngineOverloaded(retry_after_s=1 + waiting // max(1, self.engine.config.max_num_seqs))
            if request_id in self._streams:
                raise ValueError(f"request id {request_id!r} is already in use")
            self._streams[request_id] = stream
            self._incoming.append(
                _Submission(request_id, prompt_token_ids, params, cache_salt, time.monotonic())
            )
        self._wake.set()
        finished = False
        try:
            while True:
                item = await stream.queue.get()
                if item is None:
                    finished = True
                    return
                if isinstance(item, BaseException):
                    finished = True
                    raise item
                yield item
        finally:
            if not finished:
                self.abort(request_id)

    def abort(self, request_id: str) -> None:
        with self._lock:
            self._aborts.add(request_id)
            self._streams.pop(request_id, None)
        self._wake.set()

    # -- the loop (engine thread) --------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._lock:
                incoming, self._incoming = self._incoming, []
                aborts, self._aborts = self._aborts, set()
                if self._abort_all:
                    self._end_all(EngineStopped("the worker shut down before the request finished"))
                stopping = self._stopping and not self._streams
            for request_id in aborts:
                self.engine.abort(request_id)
            for sub in incoming:
                self._admit(sub)
            if stopping and not self.engine.has_unfinished_requests():
                return
            if not self.engine.has_unfinished_requests():
                self._wake.wait()
                self._wake.clear()
                # Requests of a burst arrive over a few milliseconds; let them join the first step.
                time.sleep(ADMISSION_WINDOW_S)
                continue
            try:
                outputs = self.engine.step()
            except Exception as exc:  # noqa: BLE001 - one failed step must not kill the worker
                logger.error("engine step failed", extra={"error_type": type(exc).__name__})
                self._fail_all()
                continue
            self.num_steps += 1
            self._deliver(outputs)

    def _admit(self, sub: _Submission) -> None:
        with self._lock:
            stream = self._streams.get(sub.request_id)
        if stream is None:
            return  # aborted before it reached the engine
        try:
            self.engine.add_request(
                sub.request_id,
                sub.prompt_token_ids,
                sub.params,
                cache_salt=sub.cache_salt,
                arrival_time=sub.arrival_time,
            )
        except ValueError as exc:
            self._send(stream, [exc, None])
            with self._lock:
                self._streams.pop(sub.request_id, None)

    def _deliver(self, outputs: list[RequestOutput]) -> None:
        by_request: dict[str, list[_Item]] = {}
        for out in outputs:
            by_request.setdefault(out.request_id, []).append(out)
        for request_id, items in by_request.items():
            done = not self.engine.has_request(request_id)
            with self._lock:
                stream = self._streams.get(request_id)
                if done:
                    self._streams.pop(request_id, None)
            if stream is None:
                continue
            if done:
                items.append(None)
            self._send(stream, items)

    def _fail_all(self) -> None:
        with self._lock:
            self._end_all(EngineFailed("the engine failed while running the request"))

    def _end_all(self, error: Exception) -> None:
        """Abort every request and end its stream with ``error`` (call with the lock held)."""
        streams, self._streams = self._streams, {}
        for request_id, stream in streams.items():
            self.engine.abort(request_id)
            self._send(stream, [error, None])

    @staticmethod
    def _send(stream: _Stream, items: list[_Item]) -> None:
        def put() -> None:
            for item in items:
                stream.queue.put_nowait(item)

        # A closed event loop raises RuntimeError: its caller is gone and nobody is listening.
        with contextlib.suppress(RuntimeError):
            stream.loop.call_soon_threadsafe(put)
