"""Loading a GGUF checkpoint: the config from its metadata, every tensor dequantized into the compute dtype.

Names follow llama.cpp's converter in reverse (``blk.N.attn_q`` -> ``model.layers.N.self_attn.q_proj``).
For the ``llama`` architecture that converter also permutes the rows of q and k so that each head's
rotary pairs are interleaved; the permutation is undone here exactly as transformers' GGUF loader
undoes it. ``qwen2`` files are written without that permutation and load as they are.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import IO

import numpy as np
import torch
from gguf import GGUFReader, ReaderTensor

from backend.loader.dequant import dequantize
from backend.loader.errors import ModelLoadError
from backend.loader.gguf_metadata import GGUFMetadata, open_gguf
from backend.loader.gguf_rope import rope_scaling_from_gguf
from backend.loader.gguf_tokenizer import tokenizer_from_gguf
from backend.loader.tokenizer import TokenizerBundle
from backend.loader.weights import PROGRESS_LOG_BYTES, Progress, check_shapes
from backend.models.config import Architecture, ModelConfig

logger = logging.getLogger(__name__)

SUPPORTED_ARCHITECTURES = ("llama", "qwen2")

_GLOBAL_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_LAYER_NAMES = {
    "attn_norm.weight": "input_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_q.bias": "self_attn.q_proj.bias",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_k.bias": "self_attn.k_proj.bias",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_v.bias": "self_attn.v_proj.bias",
    "attn_output.weight": "self_attn.o_proj.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}
_LAYER_TENSOR = re.compile(r"blk\.(\d+)\.(.+)")
# llama.cpp stores Llama 3 rope scaling as per-frequency divisors; it is config, not a weight.
ROPE_FREQS = "rope_freqs.weight"


def hf_tensor_name(gguf_name: str) -> str | None:
    """The Hugging Face name of a GGUF tensor, or None when it is not a Llama-family weight."""
    if gguf_name in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[gguf_name]
    match = _LAYER_TENSOR.fullmatch(gguf_name)
    if match is None or match[2] not in _LAYER_NAMES:
        return None
    return f"model.layers.{int(match[1])}.{_LAYER_NAMES[match[2]]}"


def load_gguf(
    file: IO[bytes],
    path: Path,
    *,
    dtype: torch.dtype,
    progress: Progress | None = None,
    log_progress_bytes: int = PROGRESS_LOG_BYTES,
) -> tuple[ModelConfig, dict[str, torch.Tensor], TokenizerBundle]:
    """Parse an open GGUF file: its config, its weights (HF names, ``dtype``) and its tokenizer."""
    reader = open_gguf(file, path)
    meta = GGUFMetadata(reader, path)
    rope_freqs = next((t for t in reader.tensors if t.name == ROPE_FREQS), None)
    config = config_from_gguf(meta, None if rope_freqs is None else _floats(rope_freqs, path))
    tokenizer = tokenizer_from_gguf(meta)
    log = reader.data.size >= log_progress_bytes
    weights = _load_weights(reader, config, path, dtype, progress, log)
    return config, weights, tokenizer


def config_from_gguf(meta: GGUFMetadata, rope_freqs: np.ndarray | None = None) -> ModelConfig:
    """The model config a GGUF file's metadata describes (llama.cpp key names)."""
    arch = meta.string("general.architecture")
    if arch not in SUPPORTED_ARCHITECTURES:
        raise ModelLoadError(
            f"GGUF architecture {arch!r} is not supported (supported: {', '.join(SUPPORTED_ARCHITECTURES)})",
            path=meta.path,
        )

    def key(name: str) -> str:
        return f"{arch}.{name}"

    hidden = meta.integer(key("embedding_length"))
    heads = meta.integer(key("attention.head_count"))
    if heads <= 0:
        raise ModelLoadError(f"{key('attention.head_count')} must be positive, found {heads}", path=meta.path)
    rotary_dim = meta.get_integer(key("rope.dimension_count"))
    # Llama rotates whole heads, so its rotary width is the head size (transformers reads it so too).
    fallback = rotary_dim if arch == "llama" and rotary_dim else hidden // heads
    head_dim = meta.get_integer(key("attention.key_length")) or fallback
    if rotary_dim is not None and rotary_dim != head_dim:
        raise ModelLoadError(
            f"partial rotary embeddings are not supported ({key('rope.dimension_count')}={rotary_dim}, "
            f"head_dim={head_dim})",
            path=meta.path,
        )
    rope_theta = meta.get_number(key("rope.freq_base")) or 10000.0
    eos_ids = [
        meta.get_integer(f"tokenizer.ggml.{name}")
        for name in ("eos_token_id", "eot_token_id", "eom_token_id")
    ]
    try:
        return ModelConfig(
            architecture=_architecture(meta, arch),
            vocab_size=_vocab_size(meta, key("vocab_size")),
            hidden_size=hidden,
            intermediate_size=meta.integer(key("feed_forward_length")),
            num_hidden_layers=meta.integer(key("block_count")),
            num_attention_heads=heads,
            num_key_value_heads=meta.get_integer(key("attention.head_count_kv")) or heads,
            head_dim=head_dim,
            rms_norm_eps=meta.number(key("attention.layer_norm_rms_epsilon")),
            rope_theta=rope_theta,
            max_position_embeddings=meta.integer(key("context_length")),
            # llama.cpp writes an output matrix only when it is not the embedding matrix.
            tie_word_embeddings="output.weight" not in meta.tensor_names,
            attention_bias="blk.0.attn_q.bias" in meta.tensor_names,
            rope_scaling=rope_scaling_from_gguf(meta, arch, head_dim, rope_theta, rope_freqs),
            bos_token_id=meta.get_integer("tokenizer.ggml.bos_token_id"),
            # End-of-turn ids stop generation too: chat models end turns with them, not with EOS.
            eos_token_ids=tuple(dict.fromkeys(i for i in eos_ids if i is not None)),
        )
    except ValueError as exc:
        raise ModelLoadError(str(exc), path=meta.path) from exc


def _architecture(meta: GGUFMetadata, arch: str) -> Architecture:
    if arch == "qwen2":
        return "qwen2"
    # llama.cpp files Mistral under "llama"; like transformers, tell them apart by the model's name.
    name = meta.get_string("general.name") or ""
    return "mistral" if "mistral" in name.lower() else "llama"


def _vocab_size(meta: GGUFMetadata, key: str) -> int:
    size = meta.get_integer(key)
    if size is not None:
        return size
    tokens = meta.fields.get("tokenizer.ggml.tokens")
    if tokens is None:
        raise ModelLoadError(
            f"neither {key!r} nor 'tokenizer.ggml.tokens' gives the vocabulary size", path=meta.path
        )
    return len(tokens.data)


def _floats(tensor: ReaderTensor, path: Path) -> np.ndarray:
    shape = tuple(int(n) for n in reversed(tensor.shape.tolist()))
    try:
        return dequantize(tensor.data, tensor.tensor_type, shape, torch.float32).numpy()
    except (ValueError, NotImplementedError) as exc:
        raise ModelLoadError(f"tensor {tensor.name!r}: {exc}", path=path) from exc


def _load_weights(
    reader: GGUFReader,
    config: ModelConfig,
    path: Path,
    dtype: torch.dtype,
    progress: Progress | None,
    log: bool,
) -> dict[str, torch.Tensor]:
    tensors: dict[str, ReaderTensor] = {}
    for tensor in reader.tensors:
        if tensor.name == ROPE_FREQS:
            continue
        name = hf_tensor_name(tensor.name)
        if name is None:
            raise ModelLoadError(f"unexpected tensor {tensor.name!r} for a Llama-family model", path=path)
        tensors[name] = tensor
    check_shapes(config, {name: _torch_shape(t) for name, t in tensors.items()}, path)

    # Only llama files carry llama.cpp's rotary permutation of q and k (transformers' loader agrees).
    permuted = config.architecture != "qwen2"
    log_every = max(1, len(tensors) // 10) if log else 0
    weights: dict[str, torch.Tensor] = {}
    for done, (name, tensor) in enumerate(tensors.items(), 1):
        data = tensor.data
        if permuted and ".self_attn.q_proj." in name:
            data = unpermute_rows(data, config.num_attention_heads)
        elif permuted and ".self_attn.k_proj." in name:
            data = unpermute_rows(data, config.num_key_value_heads)
        try:
            weight = dequantize(data, tensor.tensor_type, _torch_shape(tensor), dtype)
        except (ValueError, NotImplementedError) as exc:
            raise ModelLoadError(f"tensor {tensor.name!r}: {exc}", path=path) from exc
        weights[name] = weight
        if progress is not None:
            progress(done, len(tensors))
        if log_every and (done % log_every == 0 or done == len(tensors)):
            logger.info("dequantized %d/%d tensors of %s", done, len(tensors), path.name)
    return weights


def unpermute_rows(data: np.ndarray, num_heads: int) -> np.ndarray:
    """Undo llama.cpp's ``permute`` of q/k rows: per head, row order (half, pair) -> (pair, half).

    llama.cpp views each head's rows as (2, head_dim/2) and swaps the axes, interleaving the two
    rotary halves; this views them as (head_dim/2, 2) and swaps back, as transformers' loader does.
    Rows are whole quantization blocks, so the raw bytes are reordered before dequantizing.
    """
    rows = data.shape[0]
    order = np.arange(rows).reshape(num_heads, rows // num_heads // 2, 2).swapaxes(1, 2).reshape(-1)
    return data[order]


def _torch_shape(tensor: ReaderTensor) -> tuple[int, ...]:
    # GGUF lists dimensions innermost first.
    return tuple(int(n) for n in reversed(tensor.shape.tolist()))
