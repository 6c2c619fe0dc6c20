"""Text normalization before any guard looks at a message.

``normalize(text)`` returns what is forwarded when sanitizing (``text``: NFKC, invisible characters
removed), what detectors read (``detection_text``: lower case, accents, look-alike letters and
leetspeak folded), payloads decoded from base64, hex, URL, HTML, ``\\u`` escapes, Morse, binary and Unicode
tag characters (``decoded``, each scanned too), and ``signals``: evidence of hiding, which is itself
suspicious (zero-width, bidi-control and tag characters, mixed-script look-alikes, encoded payloads).
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field

from gateway.guards.confusables import fold_accents, fold_words
from gateway.guards.decode import SUSPICIOUS_KINDS, Payload, find_payloads

# Zero-width and other invisible format characters (Cf and fillers) that carry no visible text.
_ZERO_WIDTH = (
    "\u200b\u2060\u2061\u2062\u2063\u2064\ufeff\u00ad\u034f\u180e\u115f\u1160\u3164\uffa0\u17b4\u17b5"
)
_JOINERS = "\u200c\u200d"  # legitimate inside emoji sequences and Arabic or Indic words
_BIDI_OVERRIDES = "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
_BIDI_MARKS = "\u200e\u200f\u061c"  # ordinary in right-to-left text: removed, not a signal
_CONTROL = "".join(chr(c) for c in (*range(0x00, 0x09), 0x0B, 0x0C, *range(0x0E, 0x20), *range(0x7F, 0xA0)))
_TAG_FIRST, _TAG_LAST = 0xE0000, 0xE007F
_VS_SUPPLEMENT = r"\U000e0100-\U000e01ef"
_BLACK_FLAG = "\U0001f3f4"  # England, Scotland, Wales flags are tag sequences after this

_HIDDEN = re.compile(
    f"[{_ZERO_WIDTH}{_JOINERS}{_BIDI_OVERRIDES}{_BIDI_MARKS}{_CONTROL}\U000e0000-\U000e007f{_VS_SUPPLEMENT}"
    r"\u2028\u2029]|[\ufe00-\ufe0f]{2,}"
)
_FLAG_SEQUENCE = re.compile(f"{_BLACK_FLAG}[\U000e0061-\U000e007a\U000e0030-\U000e0039]{{2,6}}\U000e007f")
_COMBINING = re.compile(r"[\u0300-\u036f]+")
_ASCII_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_SPACED_LETTERS = re.compile(r"(?<![^\W\d_])(?:[^\W\d_] {1,3}){7,}[^\W\d_](?![^\W\d_])")
_WHITESPACE_RUN = re.compile(r"[ \t]{2,}")

MAX_DECODE_DEPTH = 2


@dataclass(frozen=True, slots=True)
class Normalized:
    """One message after normalization.

    ``detection_text`` has the same length as ``text`` unless combining marks or emoji joiners were
    dropped for detection; ``offsets`` then maps each detection index to its index in ``text``.
    """

    text: str
    detection_text: str
    decoded: tuple[Payload, ...] = ()
    signals: frozenset[str] = frozenset()
    offsets: tuple[int, ...] | None = field(default=None, repr=False)

    def text_span(self, start: int, end: int) -> tuple[int, int]:
        """The span of ``text`` that produced ``detection_text[start:end]``."""
        if self.offsets is None:
            return start, end
        last = self.offsets[end - 1] + 1 if end > start else self.offsets[start]
        return self.offsets[start], last


def normalize(text: str, *, depth: int = 0) -> Normalized:
    """Normalize one message; payloads found inside are normalized (and searched) recursively."""
    signals: set[str] = set()
    hidden_ascii = ""
    if not text.isascii() or _ASCII_CONTROL.search(text):
        text, hidden_ascii = _remove_hidden(text, signals)
        text = unicodedata.normalize("NFKC", text)
    detection, offsets = _detection_text(text, signals)
    payloads = list(find_payloads(text)) if depth < MAX_DECODE_DEPTH else []
    if hidden_ascii:
        # The tag characters are already gone from ``text``: an empty span, nothing left to neutralize.
        payloads.append(Payload(kind="tag_chars", start=0, end=0, text=hidden_ascii))
    spaced = _spaced_letter_payloads(detection, offsets)
    payloads.extend(spaced)
    if any(p.kind in SUSPICIOUS_KINDS and p.kind != "tag_chars" for p in payloads):
        signals.add("encoded_payload")
    if spaced:
        signals.add("spaced_letters")
    nested: list[Payload] = []
    for payload in payloads:
        inner = normalize(payload.text, depth=depth + 1)
        signals |= inner.signals
        nested.append(Payload(payload.kind, payload.start, payload.end, inner.detection_text))
        nested.extend(Payload(p.kind, payload.start, payload.end, p.text) for p in inner.decoded)
    return Normalized(text, detection, tuple(nested), frozenset(signals), offsets)


def _remove_hidden(text: str, signals: set[str]) -> tuple[str, str]:
    """Drop invisible characters, keeping emoji joiners and flag tag sequences; decode tag-smuggled ASCII."""
    flags = {m.start() for m in _FLAG_SEQUENCE.finditer(text)}
    hidden: list[str] = []

    def replace(match: re.Match[str]) -> str:
        ch = match.group()
        if ch in "\u2028\u2029":
            return "\n"
        if ch in _JOINERS:
            if _joiner_is_legitimate(text, match.start()):
                return ch
            signals.add("invisible_chars")
        elif len(ch) == 1 and _TAG_FIRST <= ord(ch) <= _TAG_LAST:
            if _inside_flag(match.start(), flags):
                return ch
            signals.add("tag_chars")
            if 0x20 <= ord(ch) - _TAG_FIRST < 0x7F:
                hidden.append(chr(ord(ch) - _TAG_FIRST))
        elif ch in _BIDI_OVERRIDES:
            signals.add("bidi_controls")
        elif ch in _BIDI_MARKS:
            pass
        elif ch in _CONTROL:
            signals.add("control_chars")
        else:
            signals.add("invisible_chars")
        return ""

    return _HIDDEN.sub(replace, text), "".join(hidden)


def _inside_flag(index: int, flag_starts: set[int]) -> bool:
    return any(0 < index - start <= 7 for start in flag_starts)


def _joiner_is_legitimate(text: str, index: int) -> bool:
    """ZWJ/ZWNJ between emoji, or after a letter of a script that uses joiners (Arabic, Indic, ...)."""
    before = text[index - 1] if index > 0 else ""
    after = text[index + 1] if index + 1 < len(text) else ""
    if not before or not after:
        return False
    if _is_pictograph(before) and (_is_pictograph(after) or ord(after) in (0xFE0F, 0x2640, 0x2642)):
        return True
    return 0x0600 <= ord(before) <= 0x0DFF or 0x0600 <= ord(after) <= 0x0DFF


def _is_pictograph(ch: str) -> bool:
    code = ord(ch)
    return code >= 0x1F000 or 0x2600 <= code <= 0x27BF or code == 0xFE0F


def _detection_text(text: str, signals: set[str]) -> tuple[str, tuple[int, ...] | None]:
    lowered = text.lower()
    if len(lowered) != len(text):  # a few letters lower to two characters (İ): keep those as they are
        lowered = "".join(ch if len(low := ch.lower()) != 1 else low for ch in text)
    if lowered.isascii():
        folded = fold_words(lowered, signals)
        return folded, None
    folded = fold_words(fold_accents(lowered), signals)
    drop = [m.span() for m in _COMBINING.finditer(folded)]
    drop += [(m.start(), m.end()) for m in re.finditer(f"[{_JOINERS}\U000e0000-\U000e007f]", folded)]
    if not drop:
        return folded, None
    keep = [True] * len(folded)
    for start, end in drop:
        keep[start:end] = [False] * (end - start)
    offsets = tuple(i for i, kept in enumerate(keep) if kept)
    return "".join(folded[i] for i in offsets), offsets


def _spaced_letter_payloads(detection: str, offsets: tuple[int, ...] | None) -> list[Payload]:
    """``s a y  t h a t`` -> ``say that``: letter-by-letter writing defeats word-level detectors."""
    payloads = []
    for match in _SPACED_LETTERS.finditer(detection):
        # Wider gaps mark word boundaries in the spaced text.
        words = _WHITESPACE_RUN.sub("\x00", match.group()).split("\x00")
        collapsed = " ".join(word.replace(" ", "") for word in words)
        start, end = match.span()
        if offsets is not None:
            start, end = offsets[start], offsets[end - 1] + 1
        payloads.append(Payload("spaced_letters", start, end, collapsed))
    return payloads
