from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

from backend.loader import Checkpoint, ModelLoadError, load_checkpoint
from backend.loader.gguf import load_gguf
from backend.loader.gguf_metadata import open_gguf
from backend.models.config import RopeScaling
from tests.backend.tiny_models import TRAINING_TEXT, Arch, make_tiny_gguf, make_tiny_hf_dir

QUANTIZED = ["F16", "BF16", "Q8_0", "Q4_0", "Q4_1"]
# Largest error against the float32 weights, relative to the tensor's largest magnitude.
TOLERANCE = {"F16": 1e-3, "BF16": 1e-2, "Q8_0": 1e-2, "Q4_0": 0.15, "Q4_1": 0.15}


@pytest.fixture(scope="module")
def hf(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Checkpoint]:
    root = tmp_path_factory.mktemp("hf")
    return {
        arch: load_checkpoint(make_tiny_hf_dir(root / arch, arch), dtype=torch.float32)
        for arch in ("llama", "qwen2")
    }


@pytest.fixture(scope="module")
def gguf_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("gguf")


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_f32_gguf_holds_exactly_the_hf_weights(arch: Arch, hf: dict[str, Checkpoint], gguf_dir: Path) -> None:
    loaded = load_checkpoint(make_tiny_gguf(gguf_dir, arch, "F32"), dtype=torch.float32)
    reference = hf[arch]
    assert loaded.weights.keys() == reference.weights.keys()
    for name, weight in reference.weights.items():
        assert torch.equal(loaded.weights[name], weight), name
    assert loaded.config == reference.config


@pytest.mark.parametrize("tensor_type", QUANTIZED)
def test_quantized_gguf_is_the_quantization_round_trip(
    tensor_type: str, hf: dict[str, Checkpoint], gguf_dir: Path
) -> None:
    loaded = load_checkpoint(make_tiny_gguf(gguf_dir, "llama", tensor_type), dtype=torch.float32)
    qtype = gguf.GGMLQuantizationType[tensor_type]
    for name, weight in hf["llama"].weights.items():
        array = weight.numpy()
        if array.ndim == 1:
            expected = array  # llama.cpp keeps norms in F32
        elif tensor_type == "F16":
            expected = array.astype(np.float16).astype(np.float32)
        else:
            expected = gguf.quants.dequantize(gguf.quants.quantize(array, qtype), qtype)
        got = loaded.weights[name]
        # Rows are whole blocks, so llama.cpp's q/k row permutation commutes with quantization.
        assert np.array_equal(got.numpy(), expected), name
        assert (got - weight).abs().max() <= TOLERANCE[tensor_type] * weight.abs().max(), name


@pytest.mark.parametrize(("arch", "tied"), [("llama", False), ("qwen2", True)])
def test_weights_equal_what_transformers_loads_from_the_same_gguf(
    arch: Arch, tied: bool, gguf_dir: Path
) -> None:
    path = make_tiny_gguf(gguf_dir / f"{arch}-tied-{tied}", arch, "Q8_0", tie_word_embeddings=tied)
    ours = load_checkpoint(path, dtype=torch.float32)
    reference = AutoModelForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, dtype=torch.float32
    )
    state = reference.state_dict()
    if tied:
        assert ours.config.tie_word_embeddings and "lm_head.weight" not in ours.weights
        state.pop("lm_head.weight")
    assert ours.weights.keys() == state.keys()
    for name, weight in state.items():
        assert torch.equal(ours.weights[name], weight), name


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"tie_word_embeddings": True},
        {"rope_parameters": {"rope_type": "linear", "factor": 2.0, "rope_theta": 5000.0}},
        # head_dim 16: the default low/high factors explain rope_freqs
        {
            "rope_parameters": {
                "rope_type": "llama3",
                "rope_theta": 10000.0,
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 8192,
            }
        },
        # head_dim 64: several frequencies in the smooth band, so low/high are fitted
        {
            "hidden_size": 256,
            "rope_parameters": {
                "rope_type": "llama3",
                "rope_theta": 10000.0,
                "factor": 16.0,
                "low_freq_factor": 2.0,
                "high_freq_factor": 8.0,
                "original_max_position_embeddings": 8192,
            },
        },
    ],
    ids=["plain", "tied", "linear", "llama3-defaults", "llama3-fitted"],
)
def test_config_round_trips_through_gguf(overrides: dict[str, Any], tmp_path: Path) -> None:
    from_dir = load_checkpoint(make_tiny_hf_dir(tmp_path / "hf", "llama", **overrides), dtype=torch.float32)
    from_gguf = load_checkpoint(make_tiny_gguf(tmp_path, "llama", "F32", **overrides), dtype=torch.float32)
    assert from_gguf.config == from_dir.config
    if "rope_parameters" in overrides:
        assert isinstance(from_gguf.config.rope_scaling, RopeScaling)


def test_qwen2_config_has_attention_bias(hf: dict[str, Checkpoint], gguf_dir: Path) -> None:
    config = load_checkpoint(make_tiny_gguf(gguf_dir, "qwen2", "F32"), dtype=torch.float32).config
    assert config.architecture == "qwen2" and config.attention_bias
    assert "model.layers.0.self_attn.q_proj.bias" in hf["qwen2"].weights


def test_bfloat16_load_is_the_rounded_float32_load(gguf_dir: Path) -> None:
    path = make_tiny_gguf(gguf_dir, "llama", "Q4_1")
    full = load_checkpoint(path, dtype=torch.float32)
    half = load_checkpoint(path, dtype=torch.bfloat16)
    for name, weight in full.weights.items():
        assert half.weights[name].dtype == torch.bfloat16
        assert torch.equal(half.weights[name], weight.to(torch.bfloat16)), name


def test_gguf_tokenizer_equals_the_hf_tokenizer(hf: dict[str, Checkpoint], gguf_dir: Path) -> None:
    ours = load_checkpoint(make_tiny_gguf(gguf_dir, "llama", "Q8_0"), dtype=torch.float32).tokenizer
    reference = hf["llama"].tokenizer
    for line in [*TRAINING_TEXT.splitlines(), "unseen wörds 12345", "<|im_start|>x<|im_end|>"]:
        assert ours.encode(line) == reference.encode(line), line
    assert (ours.bos_token_id, ours.eos_token_ids, ours.add_bos_token) == (1, (2,), False)
    assert ours.chat_template == reference.chat_template


def test_progress_reports_every_tensor(gguf_dir: Path) -> None:
    calls: list[tuple[int, int]] = []
    loaded = load_checkpoint(
        make_tiny_gguf(gguf_dir, "llama", "F16"),
        dtype=torch.float32,
        progress=lambda done, total: calls.append((done, total)),
    )
    total = len(loaded.weights)
    assert calls == [(i, total) for i in range(1, total + 1)]


def test_truncated_tensor_data_is_reported(gguf_dir: Path, tmp_path: Path) -> None:
    data = make_tiny_gguf(gguf_dir, "llama", "Q8_0").read_bytes()
    broken = tmp_path / "truncated.gguf"
    broken.write_bytes(data[: len(data) - 1000])
    with pytest.raises(ModelLoadError, match=r"truncated") as info:
        load_checkpoint(broken, dtype=torch.float32)
    assert str(broken) in str(info.value)


def test_truncated_header_is_reported(gguf_dir: Path, tmp_path: Path) -> None:
    broken = tmp_path / "header.gguf"
    broken.write_bytes(make_tiny_gguf(gguf_dir, "llama", "F32").read_bytes()[:300])
    with pytest.raises(ModelLoadError, match="not a readable GGUF file"):
        load_checkpoint(broken, dtype=torch.float32)


def test_not_a_gguf_file_is_reported(tmp_path: Path) -> None:
    bogus = tmp_path / "model.gguf"
    bogus.write_bytes(b"PK\x03\x04" + bytes(100))
    with pytest.raises(ModelLoadError, match="not a readable GGUF file"):
        load_checkpoint(bogus, dtype=torch.float32)


def test_unsupported_architecture_is_named(tmp_path: Path) -> None:
    path = tmp_path / "phi.gguf"
    writer = gguf.GGUFWriter(str(path), "phi3")
    writer.add_block_count(1)
    writer.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(
        ModelLoadError, match=r"architecture 'phi3' is not supported \(supported: llama, qwen2\)"
    ):
        load_checkpoint(path, dtype=torch.float32)


def test_fast_reader_sees_exactly_what_gguf_reader_sees(gguf_dir: Path) -> None:
    path = make_tiny_gguf(gguf_dir, "qwen2", "Q4_0")
    reference = gguf.GGUFReader(path)
    with path.open("rb") as file:
        ours = open_gguf(file, path)
        assert ours.fields.keys() == reference.fields.keys()
        for key, field in reference.fields.items():
            mine = ours.fields[key]
            assert (mine.offset, mine.data, mine.types) == (field.offset, field.data, field.types), key
            assert all(np.array_equal(a, b) for a, b in zip(mine.parts, field.parts, strict=True)), key
        for mine_tensor, tensor in zip(ours.tensors, reference.tensors, strict=True):
            assert (mine_tensor.name, mine_tensor.tensor_type, mine_tensor.data_offset) == (
                tensor.name,
                tensor.tensor_type,
                tensor.data_offset,
            )
            assert np.array_equal(mine_tensor.data, tensor.data), tensor.name


def test_large_files_log_progress_at_info(gguf_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = make_tiny_gguf(gguf_dir, "llama", "F32")
    with caplog.at_level(logging.INFO, logger="backend.loader.gguf"), path.open("rb") as file:
        load_gguf(file, path, dtype=torch.float32, log_progress_bytes=0)
    messages = [record.getMessage() for record in caplog.records]
    # 21 tensors (2 layers of 9, embedding, norm, output), logged every 2 and at the end
    assert messages == [f"dequantized {n}/21 tensors of {path.name}" for n in (*range(2, 21, 2), 21)]
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="backend.loader.gguf"), path.open("rb") as file:
        load_gguf(file, path, dtype=torch.float32)
    assert not caplog.records
