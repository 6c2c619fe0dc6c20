"""The tokenizer a checkpoint ships, with its special tokens and chat template, and the Hugging Face builder.

Special tokens are added here, not by the backend's post-processor, so ``add_bos_token`` alone
decides whether a prompt starts with BOS, whichever file format the tokenizer came from.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer

from backend.loader.chat_template import extract_chat_template, render_chat_template
from backend.loader.errors import ChatTemplateError, ModelLoadError, json_object


@dataclass(frozen=True, slots=True)
class TokenizerBundle:
    tokenizer: Tokenizer
    bos_token_id: int | None
    eos_token_ids: tuple[int, ...]
    bos_token: str | None
    eos_token: str | None
    add_bos_token: bool
    chat_template: str | None
    vocab_size: int
    # Chat templates may name these too (transformers passes every special token it knows).
    unk_token: str | None = None
    pad_token: str | None = None

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        ids: list[int] = self.tokenizer.encode(text, add_special_tokens=False).ids
        if add_special_tokens and self.add_bos_token and self.bos_token_id is not None:
            return [self.bos_token_id, *ids]
        return ids

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = True) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def apply_chat_template(
        self, messages: Sequence[Mapping[str, Any]], *, add_generation_prompt: bool, **context: Any
    ) -> str:
        """The prompt text for ``messages`` (``ChatTemplateError`` if there is no template or it fails)."""
        if self.chat_template is None:
            raise ChatTemplateError("the model has no chat template")
        return render_chat_template(
            self.chat_template,
            messages,
            add_generation_prompt=add_generation_prompt,
            special_tokens=self.special_tokens(),
            **context,
        )

    def special_tokens(self) -> dict[str, str]:
        """The special tokens by role, as chat templates see them (absent ones left out)."""
        named = {
            "bos_token": self.bos_token,
            "eos_token": self.eos_token,
            "unk_token": self.unk_token,
            "pad_token": self.pad_token,
        }
        return {name: token for name, token in named.items() if token is not None}


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja")


def tokenizer_from_hf_dir(directory: Path) -> TokenizerBundle:
    """The tokenizer of a Hugging Face model directory."""
    contents = {
        name: (directory / name).read_bytes() for name in TOKENIZER_FILES if (directory / name).is_file()
    }
    return tokenizer_from_hf_files(directory, contents)


def tokenizer_from_hf_files(directory: Path, contents: Mapping[str, bytes]) -> TokenizerBundle:
    """``tokenizer.json`` plus ``tokenizer_config.json`` and ``chat_template.jinja`` (file name -> bytes)."""
    if "tokenizer.json" not in contents:
        raise ModelLoadError("tokenizer.json is missing (only fast tokenizers are supported)", path=directory)
    config_path = directory / "tokenizer_config.json"
    try:
        tokenizer = Tokenizer.from_str(contents["tokenizer.json"].decode("utf-8"))
    except Exception as exc:  # the Rust parser raises a bare Exception for any malformed file
        raise ModelLoadError(
            f"cannot parse tokenizer.json ({exc})", path=directory / "tokenizer.json"
        ) from exc
    config = (
        json_object(contents["tokenizer_config.json"], config_path) if config_path.name in contents else {}
    )

    def token(name: str) -> str | None:
        value = config.get(name)
        if isinstance(value, dict):  # a serialized AddedToken
            value = value.get("content")
        if value is not None and not isinstance(value, str):
            raise ModelLoadError(f"{name} should be a string, found {value!r}", path=config_path)
        return value

    def token_id(name: str) -> int | None:
        text = token(name)
        if text is None:
            return None
        found = tokenizer.token_to_id(text)
        if found is None:
            raise ModelLoadError(f"{name} {text!r} is not in the vocabulary", path=config_path)
        return int(found)

    bos_id, eos_id = token_id("bos_token"), token_id("eos_token")
    add_bos = config.get("add_bos_token")
    if add_bos is None:
        add_bos = _post_processor_adds(tokenizer, bos_id)
    elif not isinstance(add_bos, bool):
        raise ModelLoadError(f"add_bos_token should be true or false, found {add_bos!r}", path=config_path)
    chat_template: str | None
    if "chat_template.jinja" in contents:
        try:
            chat_template = contents["chat_template.jinja"].decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ModelLoadError(f"not UTF-8 text ({exc})", path=directory / "chat_template.jinja") from exc
    else:
        try:
            chat_template = extract_chat_template(config.get("chat_template"))
        except ChatTemplateError as exc:
            raise ModelLoadError(str(exc), path=config_path) from exc
    tokenizer.post_processor = None  # BOS is TokenizerBundle.encode's decision alone
    return TokenizerBundle(
        tokenizer=tokenizer,
        bos_token_id=bos_id,
        eos_token_ids=() if eos_id is None else (eos_id,),
        bos_token=token("bos_token"),
        eos_token=token("eos_token"),
        add_bos_token=add_bos,
        chat_template=chat_template,
        vocab_size=tokenizer.get_vocab_size(with_added_tokens=True),
        unk_token=token("unk_token"),
        pad_token=token("pad_token"),
    )


def _post_processor_adds(tokenizer: Tokenizer, bos_id: int | None) -> bool:
    """Whether tokenizer.json's post-processor puts BOS first (what transformers follows without a flag)."""
    if bos_id is None:
        return False
    plain = tokenizer.encode("a", add_special_tokens=False).ids
    special = tokenizer.encode("a", add_special_tokens=True).ids
    return len(special) > len(plain) and special[0] == bos_id
