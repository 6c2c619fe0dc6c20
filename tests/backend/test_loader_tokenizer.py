from __future__ import annotations

import json
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from backend.loader.gguf_metadata import GGUFMetadata, open_gguf
from backend.loader.gguf_tokenizer import tokenizer_from_gguf
from backend.loader.tokenizer import TokenizerBundle, tokenizer_from_hf_dir
from tests.backend.tiny_models import TRAINING_TEXT, make_tiny_hf_dir, make_tiny_sentencepiece_gguf

TEXTS = [
    *TRAINING_TEXT.splitlines(),
    "",
    " ",
    "  two leading spaces",
    "trailing space ",
    "unseen wörds ⚡ 12345",
    "<|im_start|>user\nhi<|im_end|>",
    "tabs\tand\nnewlines\n\n",
]


def backend_json(tokenizer: object) -> dict[str, object]:
    data = json.loads(tokenizer.to_str())  # type: ignore[attr-defined]
    # BOS is added by TokenizerBundle.encode, not by a post-processor.
    data.pop("post_processor")
    return dict(data)


def gguf_bundle(path: Path) -> TokenizerBundle:
    with path.open("rb") as file:
        return tokenizer_from_gguf(GGUFMetadata(open_gguf(file, path), path))


def assert_same_as_transformers(ours: TokenizerBundle, reference: object) -> None:
    for text in TEXTS:
        ids = ours.encode(text)
        assert ids == reference.encode(text), text  # type: ignore[attr-defined]
        for skip in (True, False):
            expected = reference.decode(ids, skip_special_tokens=skip)  # type: ignore[attr-defined]
            assert ours.decode(ids, skip_special_tokens=skip) == expected, text


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_hf_dir(tmp_path_factory.mktemp("tok") / "llama", "llama")


def test_hf_directory_tokenizer_equals_transformers(tiny_dir: Path) -> None:
    ours = tokenizer_from_hf_dir(tiny_dir)
    reference = AutoTokenizer.from_pretrained(str(tiny_dir))
    assert_same_as_transformers(ours, reference)
    assert (ours.bos_token, ours.eos_token, ours.add_bos_token) == ("<|im_start|>", "<|im_end|>", False)
    assert (ours.bos_token_id, ours.eos_token_ids) == (1, (2,))
    assert ours.vocab_size == len(reference)


@pytest.mark.parametrize("with_merges", [False, True], ids=["merges-from-scores", "merges-in-file"])
def test_sentencepiece_gguf_tokenizer_equals_transformers(with_merges: bool, tmp_path: Path) -> None:
    path = make_tiny_sentencepiece_gguf(tmp_path, with_merges=with_merges)
    ours = gguf_bundle(path)
    reference = AutoTokenizer.from_pretrained(str(tmp_path), gguf_file=path.name)
    assert backend_json(ours.tokenizer) == backend_json(reference.backend_tokenizer)
    # llama.cpp adds BOS to a SentencePiece vocabulary unless the file says otherwise.
    assert ours.add_bos_token
    assert ours.encode("hello")[0] == ours.bos_token_id == 1
    assert_same_as_transformers(ours, reference)


def test_control_and_user_defined_tokens_are_never_split(tmp_path: Path) -> None:
    ours = gguf_bundle(make_tiny_sentencepiece_gguf(tmp_path))
    vocab = ours.tokenizer.get_vocab()
    ids = ours.encode("a<|im_start|>b<|im_end|>", add_special_tokens=False)
    assert vocab["<|im_start|>"] in ids and vocab["<|im_end|>"] in ids
    # Control tokens are special (dropped when skipping specials); user-defined ones are text.
    assert ours.decode(ids, skip_special_tokens=True) == "ab<|im_end|>"


def test_add_bos_token_controls_encode(tmp_path: Path) -> None:
    ours = tokenizer_from_hf_dir(make_tiny_hf_dir(tmp_path, "llama", add_bos_token=True))
    assert ours.encode("Hello") == [1, *ours.encode("Hello", add_special_tokens=False)]
    assert ours.tokenizer.encode("Hello").ids == ours.encode("Hello", add_special_tokens=False)


def test_add_bos_is_taken_from_the_post_processor_when_unset(tiny_dir: Path, tmp_path: Path) -> None:
    tokenizer = json.loads((tiny_dir / "tokenizer.json").read_text())
    tokenizer["post_processor"] = {
        "type": "TemplateProcessing",
        "single": [
            {"SpecialToken": {"id": "<|im_start|>", "type_id": 0}},
            {"Sequence": {"id": "A", "type_id": 0}},
        ],
        "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
        "special_tokens": {"<|im_start|>": {"id": "<|im_start|>", "ids": [1], "tokens": ["<|im_start|>"]}},
    }
    config = json.loads((tiny_dir / "tokenizer_config.json").read_text())
    del config["add_bos_token"]
    (tmp_path / "tokenizer.json").write_text(json.dumps(tokenizer))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    ours = tokenizer_from_hf_dir(tmp_path)
    assert ours.add_bos_token
    assert ours.encode("Hi") == AutoTokenizer.from_pretrained(str(tmp_path)).encode("Hi")


def test_chat_template_file_takes_precedence(tiny_dir: Path, tmp_path: Path) -> None:
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (tmp_path / name).write_bytes((tiny_dir / name).read_bytes())
    (tmp_path / "chat_template.jinja").write_text("{{ messages[0]['content'] }}")
    ours = tokenizer_from_hf_dir(tmp_path)
    assert (
        ours.apply_chat_template([{"role": "user", "content": "only"}], add_generation_prompt=False) == "only"
    )
