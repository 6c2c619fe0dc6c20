"""AsyncEngine: the engine thread fed from asyncio, on a tiny real checkpoint."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from backend.async_engine import AsyncEngine, EngineOverloaded, EngineStopped
from backend.engine.llm_engine import EngineConfig, InvalidRequestError, LLMEngine
from backend.engine.sampling_params import SamplingParams
from tests.backend.tiny_models import make_tiny_hf_dir

LONG = SamplingParams(max_tokens=200, temperature=0, ignore_eos=True)
SHORT = SamplingParams(max_tokens=4, temperature=0, ignore_eos=True)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_hf_dir(tmp_path_factory.mktemp("tiny") / "llama", "llama")


@pytest.fixture
def engine(checkpoint: Path) -> Iterator[LLMEngine]:
    yield LLMEngine.from_model(checkpoint, EngineConfig(dtype="float32", kv_cache_memory_bytes=2 << 20))


def test_outputs_stream_and_the_request_ends(engine: LLMEngine) -> None:
    async def main() -> list[int]:
        runner = AsyncEngine(engine)
        runner.start()
        tokens = [t async for out in runner.generate("a", [5, 6, 7], SHORT) for t in out.new_token_ids]
        await runner.stop(1)
        return tokens

    assert len(asyncio.run(main())) == 4


def test_a_consumer_that_goes_away_aborts_within_a_step(engine: LLMEngine) -> None:
    async def main() -> tuple[int, int]:
        runner = AsyncEngine(engine)
        runner.start()
        stream = runner.generate("a", [5, 6, 7, 8], LONG)
        await anext(stream)
        await anext(stream)
        await stream.aclose()  # what a client disconnect does to the response body
        steps = runner.num_steps
        deadline = time.monotonic() + 5
        while engine.has_unfinished_requests() and time.monotonic() < deadline:  # noqa: ASYNC110 - polls another thread
            await asyncio.sleep(0.001)
        after = runner.num_steps - steps
        await runner.stop(1)
        return after, engine.stats().num_blocks_used

    steps_after_abort, blocks = asyncio.run(main())
    assert steps_after_abort <= 1
    assert blocks == 0


def test_the_loop_sleeps_when_idle_and_wakes_at_once(engine: LLMEngine) -> None:
    async def main() -> tuple[int, float]:
        runner = AsyncEngine(engine)
        runner.start()
        await asyncio.sleep(0.2)
        idle_steps = runner.num_steps
        started = time.monotonic()
        stream = runner.generate("a", [5, 6], SHORT)
        await anext(stream)
        first_token_s = time.monotonic() - started
        await stream.aclose()
        await runner.stop(1)
        return idle_steps, first_token_s

    idle_steps, first_token_s = asyncio.run(main())
    assert idle_steps == 0
    assert first_token_s < 0.5


def test_a_full_queue_refuses_at_once(engine: LLMEngine) -> None:
    async def main() -> None:
        runner = AsyncEngine(engine, max_waiting=1)
        # Not started: nothing drains the queue, so the second request finds it full.
        first = runner.generate("a", [5, 6], SHORT)
        pending = asyncio.ensure_future(anext(first))
        await asyncio.sleep(0.01)
        with pytest.raises(EngineOverloaded) as info:
            await anext(runner.generate("b", [5, 6], SHORT))
        assert info.value.retry_after_s >= 1
        runner.start()
        await pending
        await first.aclose()
        await runner.stop(1)

    asyncio.run(main())


def test_invalid_requests_fail_before_queueing(engine: LLMEngine) -> None:
    async def main() -> None:
        runner = AsyncEngine(engine)
        runner.start()
        with pytest.raises(InvalidRequestError, match="context length"):
            await anext(runner.generate("a", [5] * 300, SHORT))
        await runner.stop(1)

    asyncio.run(main())


def test_stop_drains_running_requests_then_refuses_new_ones(engine: LLMEngine) -> None:
    async def main() -> None:
        runner = AsyncEngine(engine)
        runner.start()
        finishing = asyncio.ensure_future(_collect(runner.generate("a", [5, 6], SHORT)))
        await asyncio.sleep(0)
        await runner.stop(5)
        assert len(await finishing) == 4
        with pytest.raises(EngineStopped):
            await anext(runner.generate("b", [5, 6], SHORT))

    asyncio.run(main())


def test_stop_aborts_what_does_not_finish_in_time(engine: LLMEngine) -> None:
    async def main() -> None:
        runner = AsyncEngine(engine)
        runner.start()
        stream = runner.generate("a", [5, 6], SamplingParams(max_tokens=240, temperature=0, ignore_eos=True))
        await anext(stream)
        await runner.stop(0.0)
        with pytest.raises(EngineStopped):
            async for _ in stream:
                pass
        assert engine.stats().num_blocks_used == 0

    asyncio.run(main())


async def _collect(stream: object) -> list[int]:
    return [t async for out in stream for t in out.new_token_ids]  # type: ignore[attr-defined]
