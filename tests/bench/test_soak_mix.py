"""The soak's pure parts: the mix, the expected outcome of each answer, SSE parsing, memory growth."""

from __future__ import annotations

import pytest

from bench import _soak_mix as mix
from bench._rss import Sample, growth
from bench._soak_mix import CATEGORIES, PLACEHOLDER, PLANTED, Answer, Expect
from bench._soak_stack import CALLERS

BY_NAME = {c.name: c for c in CATEGORIES}


def test_the_weights_sum_to_one_and_the_schedule_is_reproducible() -> None:
    assert sum(c.weight for c in CATEGORIES) == pytest.approx(1.0)
    first, again = list(mix.schedule(400, seed=3)), list(mix.schedule(400, seed=3))
    assert first == again
    assert {p.category.name for p in first} == set(BY_NAME)
    misses = [p.body["messages"][0]["content"] for p in first if p.category.expect is Expect.MISS]
    assert len(set(misses)) == len(misses)  # a miss is never asked twice


def test_primers_cover_every_prompt_a_hit_may_ask() -> None:
    primed = {(p.category.name, str(p.body["messages"])) for p in mix.primers()}
    scheduled = mix.schedule(400)
    hits = {(p.category.name, str(p.body["messages"])) for p in scheduled if p.category.expect is Expect.HIT}
    assert hits <= primed


def ok(cache: str = "", text: str = "fine", done: bool = True) -> Answer:
    return Answer(200, cache, "", text, done)


@pytest.mark.parametrize(
    ("category", "answer", "error"),
    [
        ("hit", ok("hit"), None),
        ("hit", ok("miss"), "cache_miss_for_hit"),
        ("miss_stream", ok("miss"), None),
        ("miss_stream", ok("miss", done=False), "stream_incomplete"),
        ("blocked", Answer(400, "", "prompt_rejected", "", False), None),
        ("blocked", ok(), "http_200_ok"),
        ("redacted", ok(text=f"Contact: {PLACEHOLDER}"), None),
        ("redacted", ok(text=f"Contact: {PLACEHOLDER} {PLANTED[0]}"), "pii_leaked"),
        ("redacted", ok(text="Contact: nobody"), "not_redacted"),
        ("limited", Answer(429, "", "requests_per_minute_exceeded", "", False), None),
        ("limited", Answer(429, "", "budget_exceeded", "", False), "http_429_budget_exceeded"),
        ("miss", Answer(503, "", "upstream_unavailable", "", False), "http_503_upstream_unavailable"),
    ],
)
def test_each_answer_is_checked_against_its(category: str, answer: Answer, error: str | None) -> None:
    assert mix.unexpected(BY_NAME[category], answer) == error


def test_a_stream_is_complete_only_with_done_and_no_error_event() -> None:
    chunks = b"".join(b'data: {"choices":[{"delta":{"content":"%s"}}]}\n\n' % part for part in (b"He", b"y"))
    assert mix.parse_sse(chunks + b"data: [DONE]\n\n") == ("Hey", True)
    assert mix.parse_sse(chunks) == ("Hey", False)
    failed = chunks + b'data: {"error":{"code":"guard_unavailable"}}\n\ndata: [DONE]\n\n'
    assert mix.parse_sse(failed) == ("Hey", False)


def test_growth_compares_the_window_after_warm_up_with_the_last() -> None:
    samples = [Sample(t, {"gateway": 100.0 + (t >= 50) * 10.0}) for t in range(0, 61, 5)]
    (gateway,) = growth(samples, (10.0, 20.0), (50.0, 60.0))
    assert (gateway.after_warmup_mb, gateway.last_mb, gateway.peak_mb) == (100.0, 110.0, 110.0)
    assert gateway.growth == pytest.approx(0.10)


def test_a_window_without_samples_is_refused() -> None:
    with pytest.raises(ValueError, match="no RSS samples"):
        growth([Sample(0.0, {"gateway": 1.0})], (10.0, 20.0), (0.0, 1.0))


def test_every_caller_of_the_mix_has_a_token_and_every_token_is_used() -> None:
    assert {c.caller for c in CATEGORIES} == set(CALLERS)
