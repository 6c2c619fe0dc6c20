"""Stop strings across delta boundaries: nothing of a stop string, nor after it, nor early, is emitted."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from backend.engine.stop_checker import StopStringMatcher


def first_stop(text: str, stop: Sequence[str]) -> int | None:
    """Reference: start of the occurrence that is completed first (earliest end, then longest)."""
    for end in range(len(text) + 1):
        starts = [end - len(s) for s in stop if end >= len(s) and text[end - len(s) : end] == s]
        if starts:
            return min(starts)
    return None


def split(text: str, cuts: Sequence[int]) -> list[str]:
    bounds = sorted({0, len(text), *(c for c in cuts if 0 < c < len(text))})
    return [text[a:b] for a, b in itertools.pairwise(bounds)]


def run(stop: Sequence[str], deltas: Sequence[str]) -> tuple[str, bool]:
    matcher = StopStringMatcher(stop)
    emitted = ""
    for delta in deltas:
        text, hit = matcher.feed(delta)
        emitted += text
        if hit:
            return emitted, True
    return emitted + matcher.flush(), False


alphabet = st.sampled_from("ab c")
texts = st.text(alphabet, max_size=40)
stops = st.lists(st.text(alphabet, min_size=1, max_size=4), min_size=1, max_size=3)


@settings(max_examples=500, deadline=None)
@given(texts, stops, st.lists(st.integers(0, 40), max_size=12))
def test_streamed_output_equals_text_before_first_stop(text: str, stop: list[str], cuts: list[int]) -> None:
    expected_at = first_stop(text, stop)
    output, hit = run(stop, split(text, cuts))
    assert hit == (expected_at is not None)
    assert output == (text if expected_at is None else text[:expected_at])


@settings(max_examples=500, deadline=None)
@given(texts, stops, st.lists(st.integers(0, 40), max_size=12))
def test_holds_back_exactly_what_could_still_become_a_stop(
    text: str, stop: list[str], cuts: list[int]
) -> None:
    matcher = StopStringMatcher(stop)
    fed = emitted = ""
    for delta in split(text, cuts):
        fed += delta
        out, hit = matcher.feed(delta)
        emitted += out
        if hit:
            break
        held = fed[len(emitted) :]
        assert fed.startswith(emitted)
        # Nothing emitted could begin a stop string that later text completes...
        for i in range(len(emitted)):
            assert not any(len(fed) - i < len(s) and s.startswith(fed[i:]) for s in stop)
        # ...and what is held is the start of some stop string, no longer than needed.
        assert held == "" or any(len(held) < len(s) and s.startswith(held) for s in stop)


@pytest.mark.parametrize(
    ("stop", "deltas", "output", "hit"),
    [
        (["END"], ["Hel", "lo E", "ND wor", "ld"], "Hello ", True),
        (["END"], ["Hello E", "N", "Dless"], "Hello ", True),
        (["END"], ["Hello EN", "TRY"], "Hello ENTRY", False),
        (["\n\n"], ["a\n", "\nb"], "a", True),
        (["###"], ["###"], "", True),
        (["abcd", "bc"], ["abcd"], "a", True),  # "bc" is completed first
        (["😀!"], ["ok 😀", "?", " 😀", "!"], "ok 😀? ", True),
        (["stop", "sto"], ["xst", "op"], "x", True),
        ([], ["any", "thing"], "anything", False),
    ],
)
def test_table(stop: list[str], deltas: list[str], output: str, hit: bool) -> None:
    assert run(stop, deltas) == (output, hit)


def test_holds_only_the_needed_suffix() -> None:
    matcher = StopStringMatcher(["abab"])
    assert matcher.feed("xxaba") == ("xx", False)  # "aba" may still become "abab"
    assert matcher.feed("a") == ("aba", False)  # "abaa": only the last "a" can start it now
    assert matcher.flush() == "a"


def test_after_a_hit_nothing_more_is_emitted() -> None:
    matcher = StopStringMatcher(["<end>"])
    assert matcher.feed("done<end>trailing") == ("done", True)
    assert matcher.hit
    assert matcher.feed("more") == ("", True)
    assert matcher.flush() == ""


def test_empty_stop_string_is_rejected() -> None:
    with pytest.raises(ValueError, match="empty"):
        StopStringMatcher(["ok", ""])
