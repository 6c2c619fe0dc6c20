"""Concurrent clients for fault tests: they chat through the gateway until told to stop and keep,
request by request, what each one saw. Every wait is bounded, so a hang shows up as an outcome."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Any

import httpx

CHAT_PATH = "/v1/chat/completions"
DONE = "data: [DONE]"
Body = Callable[[int, int], dict[str, Any]]  # (client number, request number) -> the request's JSON


@dataclass(frozen=True, slots=True)
class Outcome:
    """One request as its client saw it."""

    stream: bool
    status: int | None = None  # None: no answer at all (connection refused or broken before headers)
    request_id: str | None = None
    error_code: str | None = None  # the JSON error's code, or the code of a stream's final error event
    complete: bool = False  # the whole answer arrived: a JSON body, or a stream up to [DONE]
    failure: str | None = None  # "hang" (no byte within the timeout) or the exception that broke it
    cache: str | None = None  # the gateway's x-cache header
    started: float = 0.0  # time.monotonic() when it was sent

    @property
    def ok(self) -> bool:
        return self.status == 200 and self.complete and self.error_code is None and self.failure is None


@dataclass
class Progress:
    """A request in flight: whether it streams, and the SSE events it has received so far."""

    stream: bool
    events: int = 0

    def relaying(self, at_most: int) -> bool:
        """A stream whose first event has arrived (so a worker is sending it) and that had at most
        ``at_most`` events: far enough from its end to still be running a moment later."""
        return self.stream and 0 < self.events <= at_most


@dataclass
class Load:
    """``clients`` concurrent clients sending ``body(client, n)`` until ``stop`` is set."""

    url: str
    token: str
    body: Body
    clients: int = 6
    timeout_s: float = 30.0
    outcomes: list[Outcome] = field(default_factory=list)
    in_flight: dict[int, Progress] = field(default_factory=dict)  # by the order in which they were sent
    sent: int = 0

    async def run(self, stop: asyncio.Event) -> list[Outcome]:
        headers = {"authorization": f"Bearer {self.token}"}
        timeout = httpx.Timeout(self.timeout_s)
        async with httpx.AsyncClient(base_url=self.url, headers=headers, timeout=timeout) as client:
            await asyncio.gather(*(self._client(client, n, stop) for n in range(self.clients)))
        return self.outcomes

    async def _client(self, client: httpx.AsyncClient, number: int, stop: asyncio.Event) -> None:
        sent = 0
        while not stop.is_set():
            body = self.body(number, sent)
            key, progress = self.sent, Progress(bool(body.get("stream")))
            self.sent += 1
            self.in_flight[key] = progress
            try:
                outcome = await exchange(client, body, progress)
            finally:
                del self.in_flight[key]
            self.outcomes.append(outcome)
            sent += 1
            if outcome.failure is not None:
                return  # a broken exchange ends this client: the gateway is gone or something hangs

    def since(self, started: float) -> list[Outcome]:
        """The requests sent after ``started`` (a time.monotonic() value) that have ended."""
        return [outcome for outcome in self.outcomes if outcome.started > started]


async def exchange(
    client: httpx.AsyncClient, body: dict[str, Any], progress: Progress | None = None
) -> Outcome:
    """POST one chat completion and read all of the answer, counting its events in ``progress``."""
    stream, started = bool(body.get("stream")), time.monotonic()
    try:
        async with client.stream("POST", CHAT_PATH, json=body) as response:
            headers = response.headers
            head = Outcome(
                stream, response.status_code, headers.get("x-request-id"),
                cache=headers.get("x-cache"), started=started,
            )  # fmt: skip
            try:
                return await _read(head, response, progress or Progress(stream))
            except httpx.TransportError as exc:
                return replace(head, failure=_failure(exc))
    except httpx.TransportError as exc:
        return Outcome(stream, failure=_failure(exc), started=started)


async def _read(head: Outcome, response: httpx.Response, progress: Progress) -> Outcome:
    if not (head.stream and head.status == 200):
        payload = _json(await response.aread())
        return replace(head, complete=bool(payload), error_code=_error_code(payload))
    events: list[str] = []
    async for line in response.aiter_lines():
        if line.startswith("data: "):
            events.append(line)
            progress.events += 1
    errors = [n for n, event in enumerate(events) if event.startswith('data: {"error"')]
    complete = bool(events) and events[-1] == DONE
    if errors and errors != [len(events) - 2]:
        return replace(head, failure="error event not right before [DONE]")
    code = _error_code(_json(events[errors[0]][6:].encode())) if errors else None
    return replace(head, complete=complete, error_code=code)


def _json(data: bytes) -> dict[str, Any]:
    try:
        value = json.loads(data)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _error_code(payload: dict[str, Any]) -> str | None:
    error = payload.get("error")
    return str(error.get("code")) if isinstance(error, dict) else None


def _failure(exc: httpx.TransportError) -> str:
    return "hang" if isinstance(exc, httpx.TimeoutException) else type(exc).__name__


async def eventually(check: Callable[[], Awaitable[bool]], timeout_s: float = 20.0) -> None:
    """Poll ``check`` until it holds; TimeoutError if it never does."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if await check():
                return
        except httpx.TransportError:
            pass
        await asyncio.sleep(0.05)
    raise TimeoutError(f"condition not reached within {timeout_s}s")


async def scrape(client: httpx.AsyncClient, url: str) -> dict[str, float]:
    """The gateway's Prometheus samples by full name (labels included)."""
    text = (await client.get(f"{url}/metrics")).text
    pairs = (line.rsplit(" ", 1) for line in text.splitlines() if line and not line.startswith("#"))
    return {name: float(value) for name, value in pairs}
