"""Folding of scrambled attack words for detection only ("ignroe all prevoius isntructions").

Readers understand a word whose inner letters are shuffled as long as its first and last letters
stay in place, and so do language models; filters that look for exact words do not. A word of
lower-case letters that has the first letter, the last letter and the inner letters (in any order)
of a word from a short list of words that attacks are made of is replaced by that word. The
replacement has the same length, so spans found in the folded text are spans of the original.

The list holds only words that no other English word scrambles into (``from`` would catch ``form``),
so ordinary text is left as it is.
"""

from __future__ import annotations

import re

ATTACK_WORDS = (
    "above", "before", "bypass", "confidential", "censored", "delete", "developer", "directives",
    "disable", "disregard", "earlier", "ethical", "everything", "filters", "forget", "guidelines",
    "ignore", "ignoring", "instruction", "instructions", "jailbreak", "limitations", "output",
    "override", "password", "policies", "pretend", "previous", "prior", "prompt", "repeat",
    "respond", "restrictions", "reveal", "rules", "said", "secret", "system", "uncensored",
    "unrestricted", "what",
)  # fmt: skip

_WORD = re.compile(r"(?<![a-z])[a-z]{4,14}(?![a-z])")
_LETTERS = re.compile(r"[a-z]{4,14}")  # a superset of the words, found faster without lookarounds


def word_shape(word: str) -> tuple[str, str, str]:
    return word[0], word[-1], "".join(sorted(word[1:-1]))


_BY_SHAPE = {word_shape(word): word for word in ATTACK_WORDS}
_ENDS = frozenset((word[0], word[-1], len(word)) for word in ATTACK_WORDS)


def unscramble(text: str) -> str:
    """``text`` with scrambled spellings of the attack words written correctly."""
    fixes: dict[str, str] = {}
    for word in set(_LETTERS.findall(text)):  # each distinct run of letters looked at once
        if (word[0], word[-1], len(word)) in _ENDS:
            canonical = _BY_SHAPE.get(word_shape(word))
            if canonical is not None and canonical != word:
                fixes[word] = canonical
    if not fixes:
        return text
    return _WORD.sub(lambda match: fixes.get(match.group(), match.group()), text)
