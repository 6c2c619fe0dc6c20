"""``config.json`` (and ``generation_config.json``) of a Hugging Face model as a ``ModelConfig``.

Both spellings of RoPE settings are read: ``rope_theta`` + ``rope_scaling`` (transformers 4) and
``rope_parameters`` (transformers 5).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from backend.loader.errors import ModelLoadError
from backend.models.config import Architecture, ModelConfig, RopeScaling

SUPPORTED_CLASSES: dict[str, Architecture] = {
    "LlamaForCausalLM": "llama",
    "MistralForCausalLM": "mistral",
    "Qwen2ForCausalLM": "qwen2",
}
_MODEL_TYPES: dict[str, Architecture] = {"llama": "llama", "mistral": "mistral", "qwen2": "qwen2"}
# The config classes' own defaults where config.json may leave a field out.
_DEFAULT_CONTEXT: dict[Architecture, int] = {"llama": 2048, "mistral": 131072, "qwen2": 32768}


def config_from_hf(
    data: Mapping[str, Any], path: Path, generation: Mapping[str, Any] | None = None
) -> ModelConfig:
    """``data`` is config.json; ``generation`` (generation_config.json) may add end-of-sequence ids."""
    arch = _architecture(data, path)

    def integer(name: str, default: int | None = None) -> int:
        value = data.get(name)
        if value is None:
            if default is None:
                raise ModelLoadError(f"{name} is missing", path=path)
            value = default
        if not isinstance(value, int) or isinstance(value, bool):
            raise ModelLoadError(f"{name} should be an integer, found {value!r}", path=path)
        return value

    def number(name: str, default: float) -> float:
        value = data.get(name, default)
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise ModelLoadError(f"{name} should be a number, found {value!r}", path=path)
        return float(value)

    if data.get("hidden_act", "silu") != "silu":
        raise ModelLoadError(f"hidden_act {data['hidden_act']!r} is not supported (only silu)", path=path)
    if data.get("mlp_bias", False):
        raise ModelLoadError("mlp_bias is not supported", path=path)
    hidden, heads = integer("hidden_size"), integer("num_attention_heads")
    if heads <= 0:
        raise ModelLoadError(f"num_attention_heads must be positive, found {heads}", path=path)
    rope = data.get("rope_parameters") or {}
    if not isinstance(rope, Mapping):
        raise ModelLoadError(f"rope_parameters should be an object, found {rope!r}", path=path)
    context = integer("max_position_embeddings", _DEFAULT_CONTEXT[arch])
    window = data.get("sliding_window")
    if isinstance(window, int) and window < context and (arch == "mistral" or data.get("use_sliding_window")):
        # Attention over a window is full attention for sequences that fit in it: serve only those.
        context = window
    eos = [*_ids(data.get("eos_token_id"), "eos_token_id", path)]
    if generation is not None:
        eos += _ids(generation.get("eos_token_id"), "eos_token_id", path.parent / "generation_config.json")
    bos = data.get("bos_token_id")
    if bos is not None and (not isinstance(bos, int) or isinstance(bos, bool)):
        raise ModelLoadError(f"bos_token_id should be an integer, found {bos!r}", path=path)
    try:
        return ModelConfig(
            architecture=arch,
            vocab_size=integer("vocab_size"),
            hidden_size=hidden,
            intermediate_size=integer("intermediate_size"),
            num_hidden_layers=integer("num_hidden_layers"),
            num_attention_heads=heads,
            num_key_value_heads=integer("num_key_value_heads", heads),
            head_dim=integer("head_dim", hidden // heads),
            rms_norm_eps=number("rms_norm_eps", 1e-6),
            rope_theta=float(rope.get("rope_theta", number("rope_theta", 10000.0))),
            max_position_embeddings=context,
            tie_word_embeddings=bool(data.get("tie_word_embeddings", False)),
            # Qwen2 always has q/k/v biases; Llama only when the config says so.
            attention_bias=arch == "qwen2" or bool(data.get("attention_bias", False)),
            rope_scaling=_rope_scaling(data.get("rope_scaling") or rope, path),
            bos_token_id=bos,
            eos_token_ids=tuple(dict.fromkeys(eos)),
        )
    except ValueError as exc:
        raise ModelLoadError(str(exc), path=path) from exc


def _architecture(data: Mapping[str, Any], path: Path) -> Architecture:
    classes = data.get("architectures")
    if classes:
        if not isinstance(classes, list):
            raise ModelLoadError(f"architectures should be a list, found {classes!r}", path=path)
        for name in classes:
            if name in SUPPORTED_CLASSES:
                return SUPPORTED_CLASSES[name]
        raise ModelLoadError(
            f"architecture {', '.join(map(str, classes))} is not supported "
            f"(supported: {', '.join(SUPPORTED_CLASSES)})",
            path=path,
        )
    model_type = data.get("model_type")
    if model_type in _MODEL_TYPES:
        return _MODEL_TYPES[model_type]
    raise ModelLoadError(
        f"neither architectures nor model_type names a supported model (found model_type {model_type!r}; "
        f"supported: {', '.join(SUPPORTED_CLASSES)})",
        path=path,
    )


def _rope_scaling(spec: Mapping[str, Any], path: Path) -> RopeScaling | None:
    if not isinstance(spec, Mapping):
        raise ModelLoadError(f"rope_scaling should be an object, found {spec!r}", path=path)
    kind = spec.get("rope_type", spec.get("type"))
    if kind in (None, "default"):
        return None
    try:
        if kind == "linear":
            return RopeScaling("linear", factor=float(spec["factor"]))
        if kind == "llama3":
            return RopeScaling(
                "llama3",
                factor=float(spec["factor"]),
                low_freq_factor=float(spec.get("low_freq_factor", 1.0)),
                high_freq_factor=float(spec.get("high_freq_factor", 4.0)),
                original_max_position_embeddings=int(spec.get("original_max_position_embeddings", 8192)),
            )
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelLoadError(
            f"rope scaling {dict(spec)!r} is incomplete or malformed ({exc})", path=path
        ) from exc
    raise ModelLoadError(
        f"rope scaling type {kind!r} is not supported (supported: linear, llama3)", path=path
    )


def _ids(value: object, name: str, path: Path) -> list[int]:
    if value is None:
        return []
    items = value if isinstance(value, list) else [value]
    if not all(isinstance(i, int) and not isinstance(i, bool) for i in items):
        raise ModelLoadError(f"{name} should be an integer or a list of integers, found {value!r}", path=path)
    return list(items)
