"""Payloads hidden in encodings: base64, hex, URL percent-encoding, HTML entities, ``\\u`` escapes,
Morse code and 8-bit binary.

A candidate is kept only when it decodes to readable text, so keys, hashes, images and tokens that
happen to look like base64 are left alone. Bounded: at most ``MAX_PAYLOADS`` per text.
"""

from __future__ import annotations

import base64
import binascii
import html
import re
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass

MAX_PAYLOADS = 16
MIN_DECODED_CHARS = 4

_BASE64 = re.compile(r"(?<![A-Za-z0-9+/=_-])[A-Za-z0-9+/_-]{16,}={0,2}(?![A-Za-z0-9+/=_-])")
_HEX = re.compile(r"(?<![0-9A-Fa-f])(?:[0-9A-Fa-f]{2}[ :]?){8,}(?![0-9A-Fa-f])")
_HEX_ESCAPES = re.compile(r"(?:\\x[0-9A-Fa-f]{2}){4,}")
_URL = re.compile(r"\S*(?:%[0-9A-Fa-f]{2}\S*?){3,}(?=\s|$)")
_ENTITIES = re.compile(r"(?:&#(?:x[0-9A-Fa-f]{1,6}|[0-9]{1,7});){3,}")
_UNICODE_ESCAPES = re.compile(r"(?:\\u[0-9A-Fa-f]{4}){3,}")
# Morse: at least eight letters of dots and dashes, one space between letters; two or more spaces,
# a slash or a bar between words. Separators and symbols are disjoint, so matching stays linear.
_MORSE = re.compile(r"(?<![\w.\-])(?:[.\-]{1,7}(?: {1,3}| ?[/|] ?)){7,}[.\-]{1,7}(?![\w.\-])")
_MORSE_WORD_GAP = re.compile(r" ?[/|] ?| {2,}")
_BINARY = re.compile(r"(?<![01])(?:[01]{8}[ ,]?){4,}(?![01])")
_READABLE = re.compile(r"[^\W_]|\s")
_BAD = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ufffd]")

# Kinds whose presence is itself suspicious; URL and HTML escapes are ordinary in links and markup.
SUSPICIOUS_KINDS = frozenset(
    {"base64", "hex", "hex_escapes", "unicode_escapes", "tag_chars", "morse", "binary"}
)

_MORSE_CODE = {
    ".-": "a", "-...": "b", "-.-.": "c", "-..": "d", ".": "e", "..-.": "f", "--.": "g", "....": "h",
    "..": "i", ".---": "j", "-.-": "k", ".-..": "l", "--": "m", "-.": "n", "---": "o", ".--.": "p",
    "--.-": "q", ".-.": "r", "...": "s", "-": "t", "..-": "u", "...-": "v", ".--": "w", "-..-": "x",
    "-.--": "y", "--..": "z", "-----": "0", ".----": "1", "..---": "2", "...--": "3", "....-": "4",
    ".....": "5", "-....": "6", "--...": "7", "---..": "8", "----.": "9", ".-.-.-": ".", "--..--": ",",
    "..--..": "?", "-.-.--": "!", ".----.": "'", "-..-.": "/", "---...": ":", "-.--.": "(",
    "-.--.-": ")", "-....-": "-", ".-..-.": '"', ".--.-.": "@", "-...-": "=",
}  # fmt: skip


@dataclass(frozen=True, slots=True)
class Payload:
    """Decoded text found at ``text[start:end]`` of the message (an empty span for tag characters)."""

    kind: str
    start: int
    end: int
    text: str


def find_payloads(text: str) -> Iterator[Payload]:
    """Readable payloads encoded inside ``text``, at most ``MAX_PAYLOADS``."""
    found = 0
    for kind, pattern, decode in _DECODERS:
        if kind == "url" and "%" not in text:
            continue
        if kind in ("entities", "unicode_escapes", "hex_escapes") and "&#" not in text and "\\" not in text:
            continue
        if kind == "morse" and ".-" not in text and "-." not in text:
            continue
        if kind == "binary" and "011" not in text and "010" not in text:  # letters are 010xxxxx/011xxxxx
            continue
        for match in pattern.finditer(text):
            decoded = decode(match.group())
            if decoded is None or not _readable(decoded):
                continue
            yield Payload(kind, match.start(), match.end(), decoded)
            found += 1
            if found >= MAX_PAYLOADS:
                return


def _readable(decoded: str) -> bool:
    if len(decoded) < MIN_DECODED_CHARS or _BAD.search(decoded):
        return False
    readable = len(_READABLE.findall(decoded))
    return readable >= 0.75 * len(decoded) and sum(ch.isalpha() for ch in decoded) >= 3


def _utf8(data: bytes) -> str | None:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _base64(token: str) -> str | None:
    body = token.rstrip("=")
    if body.isalpha() and (body.islower() or body.isupper()):
        return None  # a long word, not base64
    padded = body + "=" * (-len(body) % 4)
    altchars = b"-_" if ("-" in body or "_" in body) else None
    try:
        return _utf8(base64.b64decode(padded, altchars=altchars, validate=True))
    except (binascii.Error, ValueError):
        return None


def _hex(token: str) -> str | None:
    digits = re.sub(r"[ :]", "", token)
    if len(digits) % 2:
        return None
    return _utf8(bytes.fromhex(digits))


def _hex_escapes(token: str) -> str | None:
    return _utf8(bytes.fromhex(token.replace("\\x", "")))


def _url(token: str) -> str | None:
    try:
        decoded = urllib.parse.unquote(token, errors="strict")
    except UnicodeDecodeError:
        return None
    return decoded if decoded != token else None


def _entities(token: str) -> str | None:
    return html.unescape(token)


def _unicode_escapes(token: str) -> str | None:
    try:
        return "".join(chr(int(token[i + 2 : i + 6], 16)) for i in range(0, len(token), 6))
    except ValueError:
        return None


def _morse(token: str) -> str | None:
    words = []
    for word in _MORSE_WORD_GAP.split(token.strip()):
        letters = [_MORSE_CODE.get(code) for code in word.split()]
        if not letters or None in letters:
            return None  # not Morse after all: dashes and dots of some other notation
        words.append("".join(letter for letter in letters if letter))
    decoded = " ".join(words)
    # Runs of one symbol (rules "-- -- --", ellipses) decode to one repeated letter: not a message.
    return decoded if len(set(decoded.replace(" ", ""))) >= 4 else None


def _binary(token: str) -> str | None:
    digits = token.replace(" ", "").replace(",", "")
    return _utf8(int(digits, 2).to_bytes(len(digits) // 8, "big"))


_DECODERS = (
    ("base64", _BASE64, _base64),
    ("hex", _HEX, _hex),
    ("hex_escapes", _HEX_ESCAPES, _hex_escapes),
    ("url", _URL, _url),
    ("entities", _ENTITIES, _entities),
    ("unicode_escapes", _UNICODE_ESCAPES, _unicode_escapes),
    ("morse", _MORSE, _morse),
    ("binary", _BINARY, _binary),
)
