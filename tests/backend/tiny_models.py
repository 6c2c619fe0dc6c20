"""Tiny Llama-family checkpoints for tests: a Hugging Face directory, and the same weights as GGUF.

``make_tiny_hf_dir`` saves a seeded, random-weight transformers model with GQA and a small
byte-level BPE tokenizer trained on a fixed text. ``make_tiny_gguf`` writes the same weights and
tokenizer the way llama.cpp's converter does: its tensor names, its q/k row permutation for
``llama``, 1-D tensors in F32 and the rest in the requested type, tokenizer metadata gpt2-style.
"""

from __future__ import annotations

import functools
import json
import math
from pathlib import Path
from typing import Any, Literal

import gguf
import numpy as np
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedModel, Qwen2Config, Qwen2ForCausalLM
from transformers.utils import logging as transformers_logging

Arch = Literal["llama", "qwen2"]

# save_pretrained draws a progress bar per shard; tests have no use for it.
transformers_logging.disable_progress_bar()  # type: ignore[no-untyped-call]

SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
BOS_ID, EOS_ID = 1, 2
VOCAB_SIZE = 384
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
TRAINING_TEXT = """\
The quick brown fox jumps over the lazy dog. Pack my box with five dozen liquor jugs!
A secure gateway checks every request, then the worker answers: tokens in, tokens out.
def add(a, b):
    return a + b  # 1 + 2 = 3, 10 * 20 = 200, 3.14159
Numbers like 2024, 1999 and 42 appear; so do "quotes", 'apostrophes' and don't, can't, I'm.
Ünïcödé façade naïve café — 日本語 русский Ελληνικά 😀
<|im_start|>user
Hello there<|im_end|>
<|im_start|>assistant
Hi! How can I help you today?<|im_end|>
"""


@functools.cache
def tiny_tokenizer_json() -> str:
    """A byte-level BPE tokenizer of VOCAB_SIZE tokens (specials first), serialized."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(TRAINING_TEXT.splitlines(keepends=True) * 4, trainer)
    return tokenizer.to_str()


def tiny_model(arch: Arch = "llama", **overrides: Any) -> PreTrainedModel:
    """The seeded random model both helpers save (float32, GQA, norms and biases randomized too)."""
    settings: dict[str, Any] = {
        "vocab_size": Tokenizer.from_str(tiny_tokenizer_json()).get_vocab_size(),
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 256,
        "rms_norm_eps": 1e-5,
        "tie_word_embeddings": False,
        "bos_token_id": BOS_ID,
        "eos_token_id": EOS_ID,
    } | overrides
    model: PreTrainedModel
    if arch == "llama":
        model = LlamaForCausalLM(LlamaConfig(**settings))
    else:
        model = Qwen2ForCausalLM(Qwen2Config(**settings))
    generator = torch.Generator().manual_seed(1234)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=generator)
            # Non-trivial norms and biases, so a swapped or dropped tensor shows up in the tests.
            param.copy_(1 + 0.1 * noise if "norm" in name else 0.02 * noise)
    model.train(False)  # inference mode: no dropout
    return model


def make_tiny_hf_dir(
    path: Path, arch: Arch = "llama", *, add_bos_token: bool = False, **overrides: Any
) -> Path:
    """Save the tiny model (safetensors), its tokenizer and tokenizer_config.json in ``path``."""
    path.mkdir(parents=True, exist_ok=True)
    tiny_model(arch, **overrides).save_pretrained(path)
    (path / "tokenizer.json").write_text(tiny_tokenizer_json(), encoding="utf-8")
    tokenizer_config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": SPECIAL_TOKENS[BOS_ID],
        "eos_token": SPECIAL_TOKENS[EOS_ID],
        "unk_token": SPECIAL_TOKENS[0],
        "pad_token": SPECIAL_TOKENS[0],
        "add_bos_token": add_bos_token,
        "chat_template": CHAT_TEMPLATE,
        "model_max_length": 256,
    }
    (path / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2), encoding="utf-8")
    return path


def make_tiny_gguf(path: Path, arch: Arch = "llama", tensor_type: str = "F32", **overrides: Any) -> Path:
    """Write the tiny model as GGUF; ``path`` is the file, or a directory to put it in."""
    if path.suffix != ".gguf":
        path.mkdir(parents=True, exist_ok=True)
        path = path / f"tiny-{arch}-{tensor_type}.gguf"
    qtype = gguf.GGMLQuantizationType[tensor_type]
    model = tiny_model(arch, **overrides)
    config = model.config
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_name(f"tiny-{arch}")
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_rope_dimension_count(_head_dim(config))
    writer.add_rope_freq_base(config.rope_parameters["rope_theta"])
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(config.vocab_size)
    _write_tokenizer(writer)
    state = {name: t.detach().numpy() for name, t in model.state_dict().items()}
    if config.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    rope = config.rope_parameters
    if rope.get("rope_type") == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(rope["factor"])
    elif rope.get("rope_type") == "llama3":
        writer.add_tensor("rope_freqs.weight", llama3_rope_freqs(config))
    for name, array in state.items():
        gguf_name = _gguf_name(name, config.num_hidden_layers, arch)
        if arch == "llama" and ".self_attn.q_proj." in name:
            array = llama_cpp_permute(array, config.num_attention_heads, config.num_attention_heads)
        elif arch == "llama" and ".self_attn.k_proj." in name:
            array = llama_cpp_permute(array, config.num_attention_heads, config.num_key_value_heads)
        if array.ndim == 1 or qtype == gguf.GGMLQuantizationType.F32:
            writer.add_tensor(gguf_name, array.astype(np.float32))
        elif qtype == gguf.GGMLQuantizationType.F16:
            writer.add_tensor(gguf_name, array.astype(np.float16))
        else:
            writer.add_tensor(gguf_name, gguf.quants.quantize(array, qtype), raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def llama_cpp_permute(weights: np.ndarray, n_head: int, n_head_kv: int | None) -> np.ndarray:
    """llama.cpp's ``LlamaModel.permute`` (convert_hf_to_gguf.py), kept independent of the loader."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return (
        weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
        .swapaxes(1, 2)
        .reshape(weights.shape)
    )


def llama3_rope_freqs(config: Any) -> np.ndarray:
    """The ``rope_freqs`` divisors llama.cpp's converter writes for Llama 3 rope scaling."""
    rope = config.rope_parameters
    base, dim = rope["rope_theta"], _head_dim(config)
    factor, low, high = rope["factor"], rope["low_freq_factor"], rope["high_freq_factor"]
    old_context = 8192  # the converter reads a top-level key Llama 3 configs do not have
    divisors = []
    for freq in 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim)):
        wavelen = 2 * math.pi / float(freq)
        if wavelen < old_context / high:
            divisors.append(1.0)
        elif wavelen > old_context / low:
            divisors.append(factor)
        else:
            smooth = (old_context / wavelen - low) / (high - low)
            divisors.append(1 / ((1 - smooth) / factor + smooth))
    return np.array(divisors, dtype=np.float32)


def _head_dim(config: Any) -> int:
    return int(getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads)


def _write_tokenizer(writer: gguf.GGUFWriter) -> None:
    tokenizer = json.loads(tiny_tokenizer_json())
    vocab: dict[str, int] = tokenizer["model"]["vocab"]
    tokens = sorted(vocab, key=vocab.__getitem__)
    merges = [m if isinstance(m, str) else " ".join(m) for m in tokenizer["model"]["merges"]]
    token_type = gguf.TokenType
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types([token_type.CONTROL if t in SPECIAL_TOKENS else token_type.NORMAL for t in tokens])
    writer.add_token_merges(merges)
    writer.add_bos_token_id(BOS_ID)
    writer.add_eos_token_id(EOS_ID)
    writer.add_unk_token_id(0)
    writer.add_pad_token_id(0)
    writer.add_add_bos_token(False)
    writer.add_chat_template(CHAT_TEMPLATE)


def _gguf_name(hf_name: str, n_blocks: int, arch: Arch) -> str:
    # llama.cpp's own tensor-name table, as its converter uses it.
    arch_id = gguf.MODEL_ARCH.LLAMA if arch == "llama" else gguf.MODEL_ARCH.QWEN2
    name = gguf.get_tensor_name_map(arch_id, n_blocks).get_name(hf_name, try_suffixes=(".weight", ".bias"))
    if name is None:
        raise KeyError(f"no GGUF name for {hf_name}")
    return str(name)


def make_tiny_sentencepiece_gguf(path: Path, *, with_merges: bool = False) -> Path:
    """A GGUF holding only metadata: llama hyperparameters and a SentencePiece-style ("llama") vocabulary.

    The vocabulary is what llama.cpp writes for a SentencePiece model: <unk>, <s>, </s>, the 256
    byte tokens <0x00>..<0xFF>, then pieces with ``▁`` for a space, scored best first; no merges
    unless ``with_merges`` (then the merges are the score-ordered ones, written out).
    """
    if path.suffix != ".gguf":
        path.mkdir(parents=True, exist_ok=True)
        path = path / f"tiny-sentencepiece{'-merges' if with_merges else ''}.gguf"
    words = sorted({w for w in TRAINING_TEXT.replace("\n", " ").split(" ") if w})
    chars = sorted({c for c in TRAINING_TEXT if not c.isspace()})
    pieces = [*chars, "▁"]
    for word in words[:60]:
        pieces += [f"▁{word[:k]}" for k in range(1, len(word) + 1)] + [word[k:] for k in range(1, len(word))]
    pieces = list(dict.fromkeys(pieces))
    token_type = gguf.TokenType
    tokens = [
        "<unk>",
        "<s>",
        "</s>",
        *(f"<0x{b:02X}>" for b in range(256)),
        *pieces,
        "<|im_start|>",
        "<|im_end|>",
    ]
    types = [token_type.UNKNOWN, token_type.CONTROL, token_type.CONTROL, *[token_type.BYTE] * 256]
    types += [token_type.NORMAL] * len(pieces) + [token_type.CONTROL, token_type.USER_DEFINED]
    scores = [0.0] * 259 + [-float(i) for i in range(len(pieces))] + [0.0, 0.0]
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("tiny-sentencepiece")
    writer.add_context_length(256)
    writer.add_embedding_length(64)
    writer.add_block_count(2)
    writer.add_feed_forward_length(128)
    writer.add_head_count(4)
    writer.add_head_count_kv(2)
    writer.add_rope_dimension_count(16)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(len(tokens))
    writer.add_tokenizer_model("llama")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    if with_merges:
        from backend.loader.gguf_tokenizer import merges_from_scores

        vocab = {token: i for i, token in enumerate(tokens)}
        writer.add_token_merges(
            [f"{a} {b}" for a, b in merges_from_scores(vocab, dict(zip(tokens, scores, strict=True)))]
        )
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)
    writer.add_chat_template(CHAT_TEMPLATE)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
