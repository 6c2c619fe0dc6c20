"""The worker's OpenAI API, driven by the official openai SDK over mTLS against the real default model."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from openai import (
    AsyncOpenAI,
    BadRequestError,
    DefaultAsyncHttpxClient,
    DefaultHttpxClient,
    NotFoundError,
    OpenAI,
)
from openai.types.chat import ChatCompletionMessageParam

from gateway.pki import PkiPaths
from tests.support.worker import MODEL_NAME, gateway_ssl, start_worker

pytestmark = pytest.mark.model

QUESTION: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Name three colors."}]


@pytest.fixture(scope="module")
def worker(pki: PkiPaths, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    # float32 so that greedy outputs do not depend on how requests happen to be batched.
    process, url = start_worker(pki, tmp_path_factory.mktemp("worker"), "--dtype", "float32")
    yield url
    process.stop()


@pytest.fixture(scope="module")
def client(worker: str, pki: PkiPaths) -> Iterator[OpenAI]:
    # The SDK's own HTTP client, carrying the gateway's client certificate.
    http = DefaultHttpxClient(verify=gateway_ssl(pki), timeout=120)
    yield OpenAI(base_url=f"{worker}/v1", api_key="not-used-by-the-worker", http_client=http)
    http.close()


def metrics(worker: str, pki: PkiPaths) -> dict[str, float]:
    text = httpx.get(f"{worker}/metrics", verify=gateway_ssl(pki), timeout=5).text
    return {
        line.split()[0]: float(line.split()[1])
        for line in text.splitlines()
        if line and not line.startswith("#")
    }


def test_models_lists_the_served_model(client: OpenAI) -> None:
    assert [m.id for m in client.models.list()] == [MODEL_NAME]


def test_chat_streaming_equals_non_streaming(client: OpenAI) -> None:
    whole = client.chat.completions.create(model=MODEL_NAME, messages=QUESTION, max_tokens=24, temperature=0)
    choice = whole.choices[0]
    assert choice.message.role == "assistant" and choice.message.content
    assert choice.finish_reason in {"stop", "length"}
    assert whole.usage is not None and whole.usage.completion_tokens > 0
    assert whole.usage.prompt_tokens_details is not None
    stream = client.chat.completions.create(
        model=MODEL_NAME, messages=QUESTION, max_tokens=24, temperature=0, stream=True,
        stream_options={"include_usage": True},
    )  # fmt: skip
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == choice.message.content
    assert (
        chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    )
    # The same prompt again is served partly from the prefix cache.
    assert chunks[-1].usage.prompt_tokens_details is not None
    assert (chunks[-1].usage.prompt_tokens_details.cached_tokens or 0) > 0


def test_completions_with_logprobs_streaming_and_not(client: OpenAI) -> None:
    whole = client.completions.create(
        model=MODEL_NAME, prompt="The capital of France is", max_tokens=8, temperature=0, logprobs=2
    )
    choice = whole.choices[0]
    assert choice.text and choice.logprobs is not None
    assert choice.logprobs.token_logprobs is not None and len(choice.logprobs.token_logprobs) == 8
    assert all(lp <= 0 for lp in choice.logprobs.token_logprobs if lp is not None)
    assert choice.logprobs.top_logprobs is not None and all(len(t) <= 2 for t in choice.logprobs.top_logprobs)
    streamed = client.completions.create(
        model=MODEL_NAME, prompt="The capital of France is", max_tokens=8, temperature=0, stream=True
    )
    assert "".join(c.choices[0].text for c in streamed) == choice.text


def test_chat_logprobs_have_top_alternatives(client: OpenAI) -> None:
    reply = client.chat.completions.create(
        model=MODEL_NAME, messages=QUESTION, max_tokens=5, temperature=0, logprobs=True, top_logprobs=3
    )
    content = reply.choices[0].logprobs
    assert content is not None and content.content is not None and len(content.content) == 5
    for entry in content.content:
        assert len(entry.top_logprobs) == 3
        assert entry.top_logprobs[0].logprob >= entry.top_logprobs[-1].logprob
        assert entry.logprob == pytest.approx(entry.top_logprobs[0].logprob)  # greedy picks the top one


def test_n_choices_and_seeds(client: OpenAI) -> None:
    def sample(seed: int) -> list[str]:
        reply = client.chat.completions.create(
            model=MODEL_NAME, messages=QUESTION, max_tokens=12, temperature=1.0, n=2, seed=seed
        )
        assert [c.index for c in reply.choices] == [0, 1]
        return [c.message.content or "" for c in reply.choices]

    first = sample(7)
    assert sample(7) == first
    assert sample(8) != first


def test_stop_strings_are_not_emitted(client: OpenAI) -> None:
    free = client.completions.create(model=MODEL_NAME, prompt="1, 2, 3, 4,", max_tokens=12, temperature=0)
    text = free.choices[0].text
    stop = text.strip()[:2]
    assert stop
    stopped = client.completions.create(
        model=MODEL_NAME, prompt="1, 2, 3, 4,", max_tokens=12, temperature=0, stop=[stop]
    )
    assert stopped.choices[0].text == text[: text.index(stop)]
    assert stopped.choices[0].finish_reason == "stop"


def test_client_disconnect_mid_stream_frees_everything(worker: str, pki: PkiPaths) -> None:
    body = {"model": MODEL_NAME, "prompt": "Tell a long story:", "max_tokens": 400, "stream": True,
            "temperature": 0}  # fmt: skip
    with (
        httpx.Client(verify=gateway_ssl(pki), timeout=30) as http,
        http.stream("POST", f"{worker}/v1/completions", json=body) as response,
    ):
        lines = response.iter_lines()
        received = [next(lines) for _ in range(6)]
    assert any(line.startswith("data: ") for line in received)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        state = metrics(worker, pki)
        if state["warden_worker_requests_running"] == 0 and state["warden_worker_kv_blocks_used"] == 0:
            break
        time.sleep(0.05)
    assert state["warden_worker_requests_running"] == 0
    assert state["warden_worker_kv_blocks_used"] == 0


@pytest.mark.slow
def test_64_concurrent_streams_equal_their_solo_outputs(worker: str, pki: PkiPaths, client: OpenAI) -> None:
    prompts = [f"Count from {i} to {i + 5}:" for i in range(64)]
    solo = {
        p: client.completions.create(model=MODEL_NAME, prompt=p, max_tokens=10, temperature=0).choices[0].text
        for p in prompts[:6]
    }

    async def run_all() -> list[str]:
        http = DefaultAsyncHttpxClient(verify=gateway_ssl(pki), timeout=300)
        aclient = AsyncOpenAI(base_url=f"{worker}/v1", api_key="unused", http_client=http)

        async def one(prompt: str) -> str:
            stream = await aclient.completions.create(
                model=MODEL_NAME, prompt=prompt, max_tokens=10, temperature=0, stream=True
            )
            return "".join([c.choices[0].text async for c in stream])

        try:
            return await asyncio.gather(*(one(p) for p in prompts))
        finally:
            await http.aclose()

    results = asyncio.run(run_all())
    assert all(results)
    for prompt, text in zip(prompts, results, strict=True):
        if prompt in solo:
            assert text == solo[prompt]
    assert len(set(results)) > 32  # independent outputs, not one answer broadcast


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        (b"{not json", 400, "invalid_json"),
        (b'{"model": "smollm2", "messages": "hello"}', 400, "invalid_request"),
        (b'{"model": "smollm2", "messages": [{"role": "user", "content": "hi"}], "temperature": "hot"}', 400,
         "invalid_request"),
        (b'{"model": "smollm2", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 9000000}', 400,
         "context_length_exceeded"),
        (b'{"model": "smollm2", "messages": [{"role": "user", "content": "hi"}], "bogus": 1}', 400,
         "invalid_request"),
        (b'{"model": "other", "messages": [{"role": "user", "content": "hi"}]}', 404, "model_not_found"),
        (b"[1, 2]", 400, "invalid_request"),
    ],
)  # fmt: skip
def test_bad_requests_get_openai_errors(
    worker: str, pki: PkiPaths, body: bytes, status: int, code: str
) -> None:
    response = httpx.post(
        f"{worker}/v1/chat/completions", content=body, verify=gateway_ssl(pki), timeout=10,
        headers={"content-type": "application/json"},
    )  # fmt: skip
    assert response.status_code == status
    error = response.json()["error"]
    assert error["code"] == code
    assert "Traceback" not in response.text


def test_out_of_vocabulary_token_ids_are_a_clear_400(worker: str, pki: PkiPaths) -> None:
    body = {"model": MODEL_NAME, "prompt": [1, 10**9], "max_tokens": 4}
    response = httpx.post(f"{worker}/v1/completions", json=body, verify=gateway_ssl(pki), timeout=10)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_prompt"
    assert "prompt token ids must be in" in response.json()["error"]["message"]


def test_over_long_prompt_is_a_clear_400(client: OpenAI) -> None:
    with pytest.raises(BadRequestError) as info:
        client.completions.create(model=MODEL_NAME, prompt="word " * 9000, max_tokens=4)
    assert "context" in str(info.value)


def test_unknown_model_is_404(client: OpenAI) -> None:
    with pytest.raises(NotFoundError):
        client.chat.completions.create(model="gpt-4o", messages=QUESTION)


def test_oversized_body_is_413(worker: str, pki: PkiPaths) -> None:
    body = json.dumps({"model": MODEL_NAME, "prompt": "x" * (5 * 1024 * 1024)})
    response = httpx.post(f"{worker}/v1/completions", content=body, verify=gateway_ssl(pki), timeout=30)
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "payload_too_large"


def test_full_queue_answers_429_with_retry_after(pki: PkiPaths, tmp_path: Path) -> None:
    process, url = start_worker(pki, tmp_path, "--max-num-seqs", "1", "--max-waiting", "1")
    body = {"model": MODEL_NAME, "prompt": "Once upon a time", "max_tokens": 48, "temperature": 0}

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(verify=gateway_ssl(pki), timeout=120) as http:
            return await asyncio.gather(*(http.post(f"{url}/v1/completions", json=body) for _ in range(4)))

    try:
        responses = asyncio.run(burst())
    finally:
        process.stop()
    statuses = sorted(r.status_code for r in responses)
    assert 200 in statuses and 429 in statuses
    limited = next(r for r in responses if r.status_code == 429)
    assert int(limited.headers["retry-after"]) >= 1
    assert limited.json()["error"]["code"] == "queue_full"
