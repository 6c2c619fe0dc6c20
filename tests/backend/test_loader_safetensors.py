from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file

from backend.loader import ModelLoadError, load_checkpoint
from backend.loader.hf_config import config_from_hf
from backend.loader.safetensors import load_hf_dir, read_safetensors
from backend.models.config import RopeScaling
from tests.backend.tiny_models import Arch, make_tiny_hf_dir, tiny_model


def edit_json(path: Path, **changes: Any) -> None:
    data = json.loads(path.read_text())
    path.write_text(json.dumps(data | changes))


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_hf_dir(tmp_path_factory.mktemp("tiny") / "llama", "llama")


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_weights_are_the_model_state_dict(arch: Arch, tmp_path: Path) -> None:
    loaded = load_checkpoint(
        make_tiny_hf_dir(tmp_path, arch, tie_word_embeddings=arch == "qwen2"), dtype=torch.float32
    )
    state = tiny_model(arch, tie_word_embeddings=arch == "qwen2").state_dict()
    if loaded.config.tie_word_embeddings:
        state.pop("lm_head.weight")
    assert loaded.weights.keys() == state.keys()
    for name, weight in state.items():
        assert torch.equal(loaded.weights[name], weight), name
    assert loaded.config.architecture == arch
    assert loaded.config.attention_bias == (arch == "qwen2")


def test_weights_are_converted_to_the_compute_dtype(tiny_dir: Path) -> None:
    full = load_checkpoint(tiny_dir, dtype=torch.float32)
    half = load_checkpoint(tiny_dir, dtype=torch.bfloat16)
    for name, weight in full.weights.items():
        assert torch.equal(half.weights[name], weight.to(torch.bfloat16)), name


def test_sharded_directory_loads_like_a_single_file(tiny_dir: Path, tmp_path: Path) -> None:
    tiny_model("llama").save_pretrained(tmp_path, max_shard_size="100KB")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (tmp_path / name).write_bytes((tiny_dir / name).read_bytes())
    assert len(list(tmp_path.glob("*.safetensors"))) > 1
    assert (tmp_path / "model.safetensors.index.json").is_file()
    sharded = load_checkpoint(tmp_path, dtype=torch.float32)
    single = load_checkpoint(tiny_dir, dtype=torch.float32)
    assert sharded.config == single.config
    assert sharded.weights.keys() == single.weights.keys()
    assert all(torch.equal(sharded.weights[n], w) for n, w in single.weights.items())


def test_reader_matches_the_safetensors_library(tmp_path: Path) -> None:
    generator = torch.Generator().manual_seed(0)
    tensors = {
        "f32": torch.randn(3, 5, generator=generator),
        "f16": torch.randn(7, generator=generator).half(),
        "bf16": torch.randn(2, 2, 2, generator=generator).bfloat16(),
        "f64": torch.randn(4, generator=generator).double(),
        "scalar": torch.tensor(1.5),
        "empty": torch.zeros(0, 3),
    }
    path = tmp_path / "mixed.safetensors"
    save_file(tensors, str(path), metadata={"format": "pt"})
    ours, reference = read_safetensors(path), load_file(str(path))
    assert ours.keys() == reference.keys()
    for name, tensor in reference.items():
        assert ours[name].dtype == tensor.dtype and torch.equal(ours[name], tensor), name


def test_missing_config_json_is_reported(tiny_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "model.safetensors").write_bytes((tiny_dir / "model.safetensors").read_bytes())
    with pytest.raises(ModelLoadError, match=r"config\.json is missing") as info:
        load_checkpoint(tmp_path, dtype=torch.float32)
    assert str(tmp_path) in str(info.value)


def test_unknown_architecture_is_named(tmp_path: Path) -> None:
    directory = make_tiny_hf_dir(tmp_path, "llama")
    edit_json(directory / "config.json", architectures=["GPT2LMHeadModel"], model_type="gpt2")
    with pytest.raises(ModelLoadError, match=r"config.json: architecture GPT2LMHeadModel is not supported"):
        load_checkpoint(directory, dtype=torch.float32)


def test_missing_tensor_is_named(tmp_path: Path) -> None:
    directory = make_tiny_hf_dir(tmp_path, "llama")
    state = load_file(str(directory / "model.safetensors"))
    del state["model.layers.1.mlp.down_proj.weight"]
    save_file(state, str(directory / "model.safetensors"))
    with pytest.raises(ModelLoadError, match=r"missing tensors: 'model.layers.1.mlp.down_proj.weight'"):
        load_checkpoint(directory, dtype=torch.float32)


def test_shape_mismatch_is_named(tmp_path: Path) -> None:
    directory = make_tiny_hf_dir(tmp_path, "llama")
    edit_json(directory / "config.json", intermediate_size=96)
    with pytest.raises(
        ModelLoadError, match=r"'model.layers.0.mlp.gate_proj.weight' has shape \[128, 64\], .* \[96, 64\]"
    ):
        load_checkpoint(directory, dtype=torch.float32)


def test_missing_shard_is_named(tiny_dir: Path, tmp_path: Path) -> None:
    tiny_model("llama").save_pretrained(tmp_path, max_shard_size="100KB")
    (tmp_path / "tokenizer.json").write_bytes((tiny_dir / "tokenizer.json").read_bytes())
    shard = sorted(tmp_path.glob("*.safetensors"))[-1]
    shard.unlink()
    with pytest.raises(ModelLoadError, match=f"shard {shard.name} is missing"):
        load_checkpoint(tmp_path, dtype=torch.float32)


def test_truncated_shard_is_reported(tmp_path: Path) -> None:
    directory = make_tiny_hf_dir(tmp_path, "llama")
    weights = directory / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    with pytest.raises(ModelLoadError, match="truncated or corrupt") as info:
        load_checkpoint(directory, dtype=torch.float32)
    assert "model.safetensors" in str(info.value)


def test_missing_tokenizer_is_reported(tmp_path: Path) -> None:
    directory = make_tiny_hf_dir(tmp_path, "llama")
    (directory / "tokenizer.json").unlink()
    with pytest.raises(ModelLoadError, match=r"tokenizer\.json is missing"):
        load_checkpoint(directory, dtype=torch.float32)


BASE = {
    "architectures": ["LlamaForCausalLM"],
    "vocab_size": 100,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "max_position_embeddings": 4096,
}


def test_config_defaults_and_eos_lists() -> None:
    config = config_from_hf(BASE | {"eos_token_id": [5, 7]}, Path("config.json"), {"eos_token_id": [7, 9]})
    assert config.num_key_value_heads == 4 and config.head_dim == 16
    assert config.eos_token_ids == (5, 7, 9)
    assert config.rope_scaling is None and config.rope_theta == 10000.0
    assert not config.tie_word_embeddings


@pytest.mark.parametrize(
    "rope",
    [
        {
            "rope_theta": 500000.0,
            "rope_scaling": {
                "rope_type": "llama3",
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 8192,
            },
        },
        {
            "rope_parameters": {
                "rope_type": "llama3",
                "rope_theta": 500000.0,
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 8192,
            }
        },
    ],
    ids=["transformers-4", "transformers-5"],
)
def test_both_rope_spellings_give_the_same_config(rope: dict[str, Any]) -> None:
    config = config_from_hf(BASE | rope, Path("config.json"))
    assert config.rope_theta == 500000.0
    assert config.rope_scaling == RopeScaling("llama3", 8.0, 1.0, 4.0, 8192)


def test_linear_rope_and_legacy_type_key() -> None:
    config = config_from_hf(BASE | {"rope_scaling": {"type": "linear", "factor": 4.0}}, Path("config.json"))
    assert config.rope_scaling == RopeScaling("linear", 4.0)


def test_mistral_sliding_window_caps_the_context() -> None:
    config = config_from_hf(
        BASE | {"architectures": ["MistralForCausalLM"], "sliding_window": 1024}, Path("config.json")
    )
    assert config.architecture == "mistral" and config.max_position_embeddings == 1024


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"num_hidden_layers": "2"}, "num_hidden_layers should be an integer"),
        ({"hidden_size": None}, "hidden_size is missing"),
        ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, "rope scaling type 'yarn' is not supported"),
        ({"hidden_act": "gelu"}, "hidden_act 'gelu' is not supported"),
        ({"num_key_value_heads": 3}, "multiple of num_key_value_heads"),
        ({"architectures": None, "model_type": "bert"}, "found model_type 'bert'"),
    ],
)
def test_invalid_config_is_explained(change: dict[str, Any], message: str) -> None:
    with pytest.raises(ModelLoadError, match=message):
        config_from_hf(BASE | change, Path("config.json"))


def test_large_directories_log_progress_per_shard(tiny_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="backend.loader.safetensors"):
        load_hf_dir(tiny_dir, dtype=torch.float32, log_progress_bytes=0)
    assert [r.getMessage() for r in caplog.records] == [
        f"loaded shard 1/1 (21/21 tensors) of {tiny_dir.name}"
    ]
