"""Building the tokenizer a GGUF file describes in its metadata (``tokenizer.ggml.*``).

The result matches what transformers builds for the same file (its GGUF tokenizer converter), so
prompts tokenize to the same ids: byte-level BPE for ``gpt2`` vocabularies, with the split regex
picked by ``tokenizer.ggml.pre`` where llama.cpp names one transformers knows and GPT-2's own
regex otherwise; SentencePiece-style BPE with byte fallback for ``llama`` vocabularies, with
merges from the file or rebuilt from the token scores. Control tokens become special tokens and
user-defined ones plain added tokens, so neither is ever split.
"""

from __future__ import annotations

from functools import cache

from tokenizers import AddedToken, Regex, Tokenizer, decoders, pre_tokenizers
from tokenizers.models import BPE

from backend.loader.errors import ModelLoadError
from backend.loader.gguf_metadata import GGUFMetadata
from backend.loader.tokenizer import TokenizerBundle

# llama.cpp's token types
CONTROL = 3
USER_DEFINED = 4

_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN35_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}"
    r"| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_TEKKEN_SPLIT = (
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+"
    r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*"
    r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_GPT4O_SPLIT = (
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
    r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
    r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# tokenizer.ggml.pre -> split regex. Names not listed (e.g. "smollm", "default") use GPT-2's regex.
PRE_TOKENIZER_SPLITS = {
    **dict.fromkeys(("llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral"), _LLAMA3_SPLIT),
    **dict.fromkeys(("midm-2.0", "lfm2", "jina-v5-nano", "dbrx", "smaug-bpe"), _LLAMA3_SPLIT),
    **dict.fromkeys(("qwen2", "deepseek-r1-qwen", "kormo", "f2llmv2", "megrez"), _QWEN2_SPLIT),
    "qwen35": _QWEN35_SPLIT,
    "tekken": _TEKKEN_SPLIT,
    **dict.fromkeys(("gpt-4o", "llama4", "kanana2", "talkie", "minimax-m2"), _GPT4O_SPLIT),
}


def tokenizer_from_gguf(meta: GGUFMetadata) -> TokenizerBundle:
    kind = meta.string("tokenizer.ggml.model")
    tokens = meta.strings("tokenizer.ggml.tokens")
    types = (
        [int(t) for t in meta.numbers("tokenizer.ggml.token_type")]
        if "tokenizer.ggml.token_type" in meta
        else []
    )
    merges = _merges(meta) if "tokenizer.ggml.merges" in meta else None
    if kind == "gpt2":
        if merges is None:
            raise ModelLoadError("a gpt2 tokenizer needs tokenizer.ggml.merges", path=meta.path)
        tokenizer = byte_level_bpe(tokens, merges, meta.get_string("tokenizer.ggml.pre"))
    elif kind == "llama":
        scores = [float(s) for s in meta.numbers("tokenizer.ggml.scores")] if merges is None else []
        tokenizer = sentencepiece_bpe(tokens, merges, scores)
    else:
        raise ModelLoadError(
            f"GGUF tokenizer model {kind!r} is not supported (supported: gpt2, llama)", path=meta.path
        )
    _add_special_tokens(tokenizer, tokens, types, byte_level=kind == "gpt2")

    def token(key: str) -> str | None:
        index = meta.get_integer(f"tokenizer.ggml.{key}")
        if index is None:
            return None
        if not 0 <= index < len(tokens):
            raise ModelLoadError(f"tokenizer.ggml.{key} {index} is outside the vocabulary", path=meta.path)
        special = tokens[index]
        # Transformers adds every named special token as special, even one the file marks normal.
        tokenizer.add_special_tokens([AddedToken(special, special=True, normalized=False)])
        return special

    bos_token, eos_token = token("bos_token_id"), token("eos_token_id")
    unk_token, pad_token = token("unknown_token_id"), token("padding_token_id")
    eos_ids = [
        meta.get_integer(f"tokenizer.ggml.{key}") for key in ("eos_token_id", "eot_token_id", "eom_token_id")
    ]
    add_bos = meta.get_boolean("tokenizer.ggml.add_bos_token")
    return TokenizerBundle(
        tokenizer=tokenizer,
        bos_token_id=meta.get_integer("tokenizer.ggml.bos_token_id"),
        eos_token_ids=tuple(dict.fromkeys(i for i in eos_ids if i is not None)),
        bos_token=bos_token,
        eos_token=eos_token,
        # llama.cpp adds BOS to a SentencePiece vocabulary that does not say otherwise.
        add_bos_token=add_bos if add_bos is not None else kind == "llama",
        chat_template=meta.get_string("tokenizer.chat_template"),
        vocab_size=tokenizer.get_vocab_size(with_added_tokens=True),
        unk_token=unk_token,
        pad_token=pad_token,
    )


@cache
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from bytes to printable characters (the byte-level BPE alphabet)."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    codes = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, codes), strict=True))


def byte_level_bpe(tokens: list[str], merges: list[tuple[str, str]], pre: str | None) -> Tokenizer:
    spelling = bytes_to_unicode()
    alphabet = set(spelling.values())
    # A token spelled outside the byte alphabet (a raw space, say) is respelled byte by byte.
    vocab = {
        token if set(token) <= alphabet else "".join(spelling[b] for b in token.encode("utf-8")): index
        for index, token in enumerate(tokens)
    }
    tokenizer = Tokenizer(
        BPE(
            vocab=vocab,
            merges=merges,
            dropout=None,
            continuing_subword_prefix="",
            end_of_word_suffix="",
            fuse_unk=False,
        )
    )
    split = PRE_TOKENIZER_SPLITS.get(pre or "")
    if split is None:
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    else:
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(split), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
    tokenizer.decoder = decoders.ByteLevel()
    return tokenizer


def sentencepiece_bpe(
    tokens: list[str], merges: list[tuple[str, str]] | None, scores: list[float]
) -> Tokenizer:
    """Llama's SentencePiece vocabulary as BPE: ``▁`` for spaces, one prepended, bytes as ``<0xNN>``."""
    vocab = {token: index for index, token in enumerate(tokens)}
    if merges is None:
        merges = merges_from_scores(vocab, dict(zip(tokens, scores, strict=True)))
    tokenizer = Tokenizer(BPE(vocab=vocab, merges=merges, fuse_unk=True, byte_fallback=True, dropout=None))
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=False)
    tokenizer.decoder = decoders.Sequence(
        [
            decoders.Replace("▁", " "),
            decoders.ByteFallback(),
            decoders.Fuse(),
            decoders.Strip(content=" ", left=1),
        ]
    )
    return tokenizer


def merges_from_scores(vocab: dict[str, int], scores: dict[str, float]) -> list[tuple[str, str]]:
    """Every split of a token into two vocabulary pieces, best-scored token first (SentencePiece's order)."""
    found: list[tuple[str, str, float]] = []
    for merged, score in scores.items():
        local = [
            (merged[:cut], merged[cut:], score)
            for cut in range(1, len(merged))
            if merged[:cut] in vocab and merged[cut:] in vocab
        ]
        local.sort(key=lambda m: (vocab[m[0]], vocab[m[1]]))
        found.extend(local)
    found.sort(key=lambda m: (m[2], len(m[0]), len(m[1])), reverse=True)
    return [(left, right) for left, right, _ in found]


def _merges(meta: GGUFMetadata) -> list[tuple[str, str]]:
    merges = []
    for merge in meta.strings("tokenizer.ggml.merges"):
        parts = merge.split(" ")
        if len(parts) != 2:
            raise ModelLoadError(f"merge {merge!r} is not two tokens separated by a space", path=meta.path)
        merges.append((parts[0], parts[1]))
    return merges


def _add_special_tokens(
    tokenizer: Tokenizer, tokens: list[str], types: list[int], *, byte_level: bool
) -> None:
    alphabet = set(bytes_to_unicode().values())
    # A "control" token outside the byte alphabet of a byte-level vocabulary is a mislabel in
    # llama.cpp's converter; adding it would grow the vocabulary past the model's.
    control = [
        AddedToken(token, normalized=False, special=True)
        for token, kind in zip(tokens, types, strict=False)
        if kind == CONTROL and (not byte_level or set(token) <= alphabet)
    ]
    if control:
        tokenizer.add_special_tokens(control)
    vocab = tokenizer.get_vocab()
    user_defined = [
        AddedToken(token, normalized=False, special=False)
        for token, kind in zip(tokens, types, strict=False)
        if kind == USER_DEFINED and token in vocab
    ]
    if user_defined:
        tokenizer.add_tokens(user_defined)
