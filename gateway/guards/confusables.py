"""Folding for detection only: accents, look-alike letters from other scripts, leetspeak, scrambled words.

Every fold keeps the length (a character for a character, a scrambled word for its correct
spelling), so spans found in the folded text are spans of the original. Look-alikes are folded
only where they disguise Latin text (a word mixing scripts, or a message that is mostly Latin), so
Russian or Greek text stays as written and its own rules still match.
"""

# Look-alike letters from other scripts are what this file is about.
# ruff: noqa: RUF001, RUF003

from __future__ import annotations

import re
import unicodedata

from gateway.guards.scrambled import unscramble


def _accent_table() -> dict[int, str]:
    table: dict[int, str] = {}
    for code in range(0xC0, 0x250):
        base = unicodedata.normalize("NFD", chr(code))[0]
        if base.isascii() and base.isalpha() and base != chr(code):
            table[code] = base.lower()
    table.update({ord(k): v for k, v in {"ø": "o", "ł": "l", "đ": "d", "ħ": "h", "ı": "i", "ŧ": "t"}.items()})
    return table


_ACCENTS = _accent_table()
_HAS_ACCENT = re.compile("[\u00c0-\u024f]")

# Lower-case look-alikes of Latin letters (after str.lower(), so upper-case look-alikes are covered).
_LOOKALIKES = {
    # Cyrillic
    "а": "a", "в": "b", "е": "e", "ё": "e", "к": "k", "м": "m", "н": "h", "о": "o", "р": "p",
    "с": "c", "т": "t", "у": "y", "х": "x", "ѕ": "s", "і": "i", "ї": "i", "ј": "j", "һ": "h", "ԁ": "d",
    "ԛ": "q", "ԝ": "w", "ӏ": "l", "ɡ": "g", "ү": "y",
    # Greek
    "α": "a", "β": "b", "ε": "e", "ζ": "z", "η": "n", "ι": "i", "κ": "k", "μ": "m", "ν": "v", "ο": "o",
    "ρ": "p", "τ": "t", "υ": "u", "χ": "x", "ϲ": "c", "ϳ": "j",
    # Armenian
    "օ": "o", "ս": "u", "հ": "h", "ո": "n", "ց": "g", "զ": "q",
    # Latin extensions and IPA
    "ɑ": "a", "ɪ": "i", "ʏ": "y", "ʀ": "r", "ɴ": "n", "ʟ": "l", "ᴏ": "o", "ᴄ": "c", "ᴅ": "d", "ᴇ": "e",
    "ꞵ": "b", "ſ": "s",
}  # fmt: skip
_LOOKALIKE_TABLE = str.maketrans(_LOOKALIKES)
_HAS_LOOKALIKE = re.compile("[" + "".join(_LOOKALIKES) + "]")
_WORD = re.compile(r"[^\W_]+")
_LATIN_LETTER = re.compile(r"[a-z]")
_OTHER_LETTER = re.compile(r"[^\W\d_a-z]")

_LEET = str.maketrans({"0": "o", "1": "i", "3": "e", "4": "a", "5": "s", "7": "t", "@": "a", "$": "s"})
# A word of three or more characters mixing letters with digits or @ $ used as letters.
_LEET_WORD = re.compile(r"(?<![\w@$])(?=[\w@$]*[a-z])(?=[\w@$]*[013457@$])[a-z013457@$]{3,}(?![\w@$])")


def fold_accents(text: str) -> str:
    """``é`` -> ``e`` and the like, so rules match text typed with or without accents."""
    return text.translate(_ACCENTS) if _HAS_ACCENT.search(text) else text


def fold_words(text: str, signals: set[str]) -> str:
    """Fold leetspeak words, look-alike letters used to disguise Latin words (adds "confusables") and
    scrambled spellings of attack words."""
    if not text.isascii() and _HAS_LOOKALIKE.search(text):
        text = _fold_lookalikes(text, signals)
    if any(ch in text for ch in "0134579@$"):
        text = _LEET_WORD.sub(lambda m: m.group().translate(_LEET), text)
    return unscramble(text)


def fold_pattern(pattern: str) -> str:
    """Fold a rule pattern the way detection text is folded (non-ASCII letters only, so escapes survive)."""
    return fold_accents(pattern)


def _fold_lookalikes(text: str, signals: set[str]) -> str:
    words = list(_WORD.finditer(text))
    kinds = [_kind(match.group()) for match in words]
    pieces: list[str] = []
    last = 0
    for index, match in enumerate(words):
        kind = kinds[index]
        if kind not in ("mixed", "lookalike"):
            continue
        if kind == "lookalike":
            # A whole word of look-alikes is a disguise only among Latin words ("ѕау hello"); next to
            # Russian or Greek words it is just Russian or Greek ("всё, что").
            neighbours = kinds[max(0, index - 1) : index] + kinds[index + 1 : index + 2]
            if "other" in neighbours or not {"latin", "mixed"} & set(neighbours):
                continue
        signals.add("confusables")
        pieces.append(text[last : match.start()])
        pieces.append(match.group().translate(_LOOKALIKE_TABLE))
        last = match.end()
    if not pieces:
        return text
    pieces.append(text[last:])
    return "".join(pieces)


def _kind(word: str) -> str:
    """latin, mixed (Latin letters with look-alikes), lookalike (only look-alikes), or other."""
    has_latin = _LATIN_LETTER.search(word) is not None
    if word.isascii():
        return "latin" if has_latin else "other"
    has_lookalike = _HAS_LOOKALIKE.search(word) is not None
    if has_latin and has_lookalike:
        return "mixed"
    if has_lookalike and word.translate(_LOOKALIKE_TABLE).isascii():
        return "lookalike"
    return "other"
