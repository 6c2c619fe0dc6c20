"""What every loader shares: the tensors a Llama-family checkpoint must hold, and progress reporting."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from backend.loader.errors import ModelLoadError
from backend.models.config import ModelConfig

Progress = Callable[[int, int], None]
"""Called as ``progress(tensors_done, tensors_total)`` while weights load."""

# Checkpoints at least this large also log their progress at info level.
PROGRESS_LOG_BYTES = 1 << 30


def expected_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Every weight the model needs, under its Hugging Face name, with its Hugging Face shape."""
    hidden, inter, vocab = config.hidden_size, config.intermediate_size, config.vocab_size
    q_size = config.num_attention_heads * config.head_dim
    kv_size = config.num_key_value_heads * config.head_dim
    shapes: dict[str, tuple[int, ...]] = {
        "model.embed_tokens.weight": (vocab, hidden),
        "model.norm.weight": (hidden,),
    }
    if not config.tie_word_embeddings:
        shapes["lm_head.weight"] = (vocab, hidden)
    for i in range(config.num_hidden_layers):
        p = f"model.layers.{i}."
        shapes |= {
            p + "input_layernorm.weight": (hidden,),
            p + "self_attn.q_proj.weight": (q_size, hidden),
            p + "self_attn.k_proj.weight": (kv_size, hidden),
            p + "self_attn.v_proj.weight": (kv_size, hidden),
            p + "self_attn.o_proj.weight": (hidden, q_size),
            p + "post_attention_layernorm.weight": (hidden,),
            p + "mlp.gate_proj.weight": (inter, hidden),
            p + "mlp.up_proj.weight": (inter, hidden),
            p + "mlp.down_proj.weight": (hidden, inter),
        }
        if config.attention_bias:
            shapes |= {
                p + "self_attn.q_proj.bias": (q_size,),
                p + "self_attn.k_proj.bias": (kv_size,),
                p + "self_attn.v_proj.bias": (kv_size,),
            }
    return shapes


def check_shapes(config: ModelConfig, shapes: Mapping[str, Sequence[int]], path: Path) -> None:
    """Raise ``ModelLoadError`` unless ``shapes`` names exactly the expected tensors with the expected shapes.

    Loaders call this on the checkpoint's table of contents, before reading any tensor data.
    """
    expected = expected_shapes(config)
    missing = [name for name in expected if name not in shapes]
    if missing:
        raise ModelLoadError(f"missing tensors: {_listing(missing)}", path=path)
    unexpected = [name for name in shapes if name not in expected]
    if unexpected:
        raise ModelLoadError(f"unexpected tensors: {_listing(unexpected)}", path=path)
    for name, shape in expected.items():
        found = tuple(shapes[name])
        if found != shape:
            raise ModelLoadError(
                f"tensor {name!r} has shape {list(found)}, the config implies {list(shape)}", path=path
            )


def _listing(names: list[str], limit: int = 5) -> str:
    shown = ", ".join(repr(name) for name in names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")
