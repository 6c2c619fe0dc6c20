"""Incremental detokenization: each step's new token ids in, only the text that can no longer change out.

A token does not always map to whole characters: a byte-level BPE token may hold part of a UTF-8
sequence, a SentencePiece byte-fallback token (``<0xE2>``) holds one byte, and a ``▁`` token's leading
space disappears when it is the first token decoded. So, like vLLM, the detokenizer decodes a small
window — the tokens of the previous step as context plus the new ones — and emits the part of the
window's text past what was already emitted. Per step it decodes O(1) tokens, never the whole output.

Text is held back while it may still change:

- a trailing U+FFFD may be an incomplete UTF-8 sequence that later bytes complete;
- a byte-fallback decoder turns a whole run of byte tokens into text at once (valid UTF-8) or into one
  U+FFFD per byte, so a run is held until the token after it arrives.

The concatenation of every ``add`` and the final ``flush`` equals ``tokenizer.decode(output_ids)``,
except that a first output token's leading space is kept when the prompt gives it context (the text
continues the prompt, as in vLLM): ``decode(context + output_ids)`` minus ``decode(context)``.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from dataclasses import dataclass

from tokenizers import Tokenizer

_REPLACEMENT = "\ufffd"
# Prompt tokens decoded ahead of the first output token (vLLM uses 5); enough for a leading space.
_CONTEXT_TOKENS = 4
# An unsettled window longer than this looks for a token boundary at which its text is already final.
_MAX_WINDOW = 16
# Token ids before the window are dropped from memory once this many pile up.
_TRIM_AT = 512


@dataclass(frozen=True, slots=True)
class _TokenizerFacts:
    special_ids: frozenset[int]
    byte_ids: frozenset[int]  # byte-fallback tokens, when the decoder fuses runs of them


_FACTS: weakref.WeakKeyDictionary[Tokenizer, _TokenizerFacts] = weakref.WeakKeyDictionary()


def _facts(tokenizer: Tokenizer) -> _TokenizerFacts:
    facts = _FACTS.get(tokenizer)
    if facts is None:
        special = frozenset(i for i, token in tokenizer.get_added_tokens_decoder().items() if token.special)
        byte_ids = [i for b in range(256) if (i := tokenizer.token_to_id(f"<0x{b:02X}>")) is not None]
        fused = (
            len(byte_ids) == 256 and tokenizer.decode([byte_ids[0xE2], byte_ids[0x82], byte_ids[0xAC]]) == "€"
        )
        facts = _TokenizerFacts(special, frozenset(byte_ids) if fused else frozenset())
        _FACTS[tokenizer] = facts
    return facts


class IncrementalDetokenizer:
    """Text deltas for one output sequence; ``add`` per step, ``flush`` once at the end."""

    def __init__(
        self, tokenizer: Tokenizer, prompt_token_ids: Sequence[int], skip_special_tokens: bool = True
    ) -> None:
        self._tokenizer = tokenizer
        self._skip_special_tokens = skip_special_tokens
        facts = _facts(tokenizer)
        # Skipped special tokens decode to nothing, so dropping them up front changes no text.
        self._dropped = facts.special_ids if skip_special_tokens else frozenset()
        self._byte_ids = facts.byte_ids
        self._ids: list[int] = self._context(prompt_token_ids)
        self._prefix = 0  # start of the decoded window
        self._read = len(self._ids)  # every token before this is settled
        self._emitted = len(self._decode(self._ids))  # characters of the window's text already emitted
        self._finished = False

    def add(self, token_ids: Sequence[int]) -> str:
        """Append new output tokens; returns the text that became final."""
        if self._finished:
            raise RuntimeError("the detokenizer was already flushed")
        new = [t for t in token_ids if t not in self._dropped]
        if not new:
            return ""
        self._ids.extend(new)
        if new[-1] in self._byte_ids:
            return ""  # a run of byte tokens decodes as a whole: wait for the token that ends it
        text = self._decode(self._ids[self._prefix :])
        if not text.endswith(_REPLACEMENT):
            delta = text[self._emitted :]
            # Settled: the next window keeps this step's tokens as context.
            self._prefix, self._read = self._read, len(self._ids)
            self._emitted = len(self._decode(self._ids[self._prefix : self._read]))
            self._trim()
            return delta
        delta = self._emit_until(len(text.rstrip(_REPLACEMENT)), text)
        if len(self._ids) - self._prefix > _MAX_WINDOW:
            delta += self._cut(text)
        return delta

    def flush(self) -> str:
        """The rest of the text, held-back replacement characters included; the sequence is over."""
        if self._finished:
            return ""
        self._finished = True
        return self._decode(self._ids[self._prefix :])[self._emitted :]

    def _context(self, prompt_token_ids: Sequence[int]) -> list[int]:
        context: list[int] = []
        for token in reversed(prompt_token_ids[-4 * _CONTEXT_TOKENS :]):
            if token not in self._dropped:
                context.append(token)
                if len(context) == _CONTEXT_TOKENS:
                    break
        context.reverse()
        while context and context[0] in self._byte_ids:
            context.pop(0)  # never start the window inside a run of byte tokens
        # A prompt that ends unsettled would merge with the output's first bytes: decode the output alone.
        if context and (context[-1] in self._byte_ids or self._decode(context).endswith(_REPLACEMENT)):
            return []
        return context

    def _emit_until(self, end: int, text: str) -> str:
        if end <= self._emitted:
            return ""
        delta = text[self._emitted : end]
        self._emitted = end
        return delta

    def _cut(self, text: str) -> str:
        """Restart a long unsettled window at a token boundary where its text splits cleanly.

        If decoding the two sides separately gives the same text, nothing after the boundary can change
        the text before it (an incomplete UTF-8 sequence would have merged with the bytes that follow).
        """
        end = len(self._ids)
        for cut in range(end - 1, max(self._read, end - 4), -1):
            head = self._decode(self._ids[self._prefix : cut])
            if head + self._decode(self._ids[cut:]) != text:
                continue
            delta = self._emit_until(len(head), text)
            self._prefix = self._read = cut
            self._emitted -= len(head)
            self._trim()
            return delta
        return ""

    def _trim(self) -> None:
        if self._prefix >= _TRIM_AT:
            del self._ids[: self._prefix]
            self._read -= self._prefix
            self._prefix = 0

    def _decode(self, ids: Sequence[int]) -> str:
        return self._tokenizer.decode(list(ids), skip_special_tokens=self._skip_special_tokens)
