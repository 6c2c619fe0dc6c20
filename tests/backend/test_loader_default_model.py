"""The bundled default model (SmolLM2-135M-Instruct, Q4_1 GGUF) against transformers."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from gguf import quants
from transformers import AutoTokenizer
from transformers.modeling_gguf_pytorch_utils import LlamaTensorProcessor

from backend.loader import Checkpoint, load_checkpoint, resolve_model_path
from backend.loader.gguf_metadata import open_gguf

pytestmark = pytest.mark.model

TEXTS = [
    "Hello world",
    " leading space",
    "trailing space ",
    "1234567890 and 3.14159 and 1,000,000",
    "   multiple   spaces\t\ttabs\n\nnewlines",
    "Ünïcödé façade naïve — “quotes” \u2018single\u2019",
    "日本語のテキストと中文",
    "emoji 😀👍🏽 family 👨‍👩‍👧",
    "def f(x):\n    return x**2  # comment",
    "<|im_start|>user\nhi<|im_end|>",
    "<|endoftext|> special in text",
    "don't can't won't I'm you're they'll we've",
    "CAPS LOCK SHOUTING",
    "a" * 50,
    "mixed123numbers456",
    "\u200bzero width\u200d joiner",
    "  ",
    "",
    "\n",
    "https://example.com/path?q=1&x=2#frag",
    "x = {'a': [1, 2, 3]}",
    "Ελληνικά και русский",
    "العربية من اليمين",
    "tab\tseparated\tvalues",
    "$100,000.00 (USD) \u2013 50% off!",
    "e=mc^2; ∑∫√ ≤ ≥",
    "<|im_start|><|im_end|>",
    "<|im_start",
    "SELECT * FROM t WHERE id = 10;",
    "  indented\n    code\n\tblock\r\nwindows",
    "2024-01-01T00:00:00Z",
    "The quick brown fox jumps over the lazy dog.",
]
CONVERSATIONS: list[list[dict[str, Any]]] = [
    [{"role": "user", "content": "Hi"}],
    [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Name a colour."}],
    [
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": "4"},
        {"role": "user", "content": "And times 3?"},
    ],
    [{"role": "system", "content": "Reply in French."}, {"role": "user", "content": "Bonjour — ça va ?"}],
]


@pytest.fixture(scope="module")
def checkpoint() -> Checkpoint:
    return load_checkpoint(resolve_model_path("default"), dtype=torch.bfloat16)


@pytest.fixture(scope="module")
def reference_tokenizer() -> Any:
    path = resolve_model_path("default")
    return AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)


def test_config_is_smollm2_135m(checkpoint: Checkpoint) -> None:
    config = checkpoint.config
    assert (config.architecture, config.num_hidden_layers, config.hidden_size) == ("llama", 30, 576)
    assert (config.num_attention_heads, config.num_key_value_heads, config.head_dim) == (9, 3, 64)
    assert (config.vocab_size, config.intermediate_size, config.max_position_embeddings) == (
        49152,
        1536,
        8192,
    )
    assert config.tie_word_embeddings and not config.attention_bias and config.rope_scaling is None
    assert (config.rope_theta, config.rms_norm_eps) == (100000.0, 1e-5)
    assert (config.bos_token_id, config.eos_token_ids) == (1, (2,))


def test_weights_are_complete_and_bfloat16(checkpoint: Checkpoint) -> None:
    assert len(checkpoint.weights) == 2 + 30 * 9
    assert "lm_head.weight" not in checkpoint.weights
    assert all(w.dtype == torch.bfloat16 for w in checkpoint.weights.values())
    assert checkpoint.weights["model.embed_tokens.weight"].shape == (49152, 576)


def test_tensors_equal_transformers_processing(checkpoint: Checkpoint) -> None:
    """gguf's dequantizer plus transformers' q/k un-permutation, on the real file."""
    names = {
        "blk.0.attn_q.weight": "model.layers.0.self_attn.q_proj.weight",
        "blk.7.attn_k.weight": "model.layers.7.self_attn.k_proj.weight",
        "blk.29.ffn_down.weight": "model.layers.29.mlp.down_proj.weight",
    }
    processor = LlamaTensorProcessor(config={"num_attention_heads": 9, "num_key_value_heads": 3})  # type: ignore[no-untyped-call]
    path = resolve_model_path("default")
    # open_gguf equals GGUFReader (test_loader_gguf checks that) and parses in a quarter of the time.
    with path.open("rb") as file:
        tensors = [tensor for tensor in open_gguf(file, path).tensors if tensor.name in names]
    assert len(tensors) == len(names)
    for tensor in tensors:
        weights = quants.dequantize(tensor.data, tensor.tensor_type)
        expected = processor.process(weights=weights, name=tensor.name).weights  # type: ignore[no-untyped-call]
        expected_tensor = torch.from_numpy(np.ascontiguousarray(expected)).to(torch.bfloat16)
        assert torch.equal(checkpoint.weights[names[tensor.name]], expected_tensor), tensor.name


def test_tokenizer_ids_and_text_equal_transformers(checkpoint: Checkpoint, reference_tokenizer: Any) -> None:
    tokenizer = checkpoint.tokenizer
    assert (tokenizer.bos_token_id, tokenizer.eos_token_ids, tokenizer.add_bos_token) == (1, (2,), False)
    assert (tokenizer.bos_token, tokenizer.eos_token) == ("<|im_start|>", "<|im_end|>")
    assert tokenizer.vocab_size == len(reference_tokenizer) == 49152
    for text in TEXTS:
        ids = tokenizer.encode(text)
        assert ids == reference_tokenizer.encode(text), text
        for skip in (True, False):
            assert tokenizer.decode(ids, skip_special_tokens=skip) == reference_tokenizer.decode(
                ids, skip_special_tokens=skip
            ), text


@pytest.mark.parametrize("conversation", CONVERSATIONS, ids=["single", "system", "multi-turn", "unicode"])
@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_chat_template_equals_transformers(
    checkpoint: Checkpoint,
    reference_tokenizer: Any,
    conversation: list[dict[str, Any]],
    add_generation_prompt: bool,
) -> None:
    ours = checkpoint.tokenizer.apply_chat_template(conversation, add_generation_prompt=add_generation_prompt)
    expected = reference_tokenizer.apply_chat_template(
        conversation, tokenize=False, add_generation_prompt=add_generation_prompt
    )
    assert ours == expected
    assert checkpoint.tokenizer.encode(ours) == reference_tokenizer.encode(expected)
