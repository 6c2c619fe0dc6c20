"""Phone numbers in any country's format, validated with the ``phonenumbers`` library.

Presidio's own phone recognizer tries a handful of regions and misses national formats elsewhere
("0490 75 40 81", "(08) 8747 6301"). Here a number written with a country code (+46 ..., 0044 ...)
and valid for that country stands on its own, as does a well-formed North American number; any
other group of 7 to 15 digits needs a cue word such as "phone", "call" or "fax" within a few words
before it or right after it ("... 7641-Office"). Dates, dotted quads and runs of one digit are not
numbers anyone dials, and "invoice", "order", "part" and the like veto a match.
"""

from __future__ import annotations

import re

import phonenumbers
import regex

from gateway.guards.checks import NOT_PERSONAL, Cues, with_number
from gateway.guards.recognizers import FLAGS, SpanRecognizer, cued

_EXTENSION = regex.compile(r"\s?(?:x|ext\.?|extension)\s?\d{1,6}$", FLAGS)
_PIECE = regex.compile(r"\+|\(\+?\d{1,5}\)|\d+|[ .\-/]")
_SEPARATORS = frozenset(" .-/")
_NANP = regex.compile(r"(?:\+?1[ .-]?)?(?:\(\d{3}\) ?|\d{3}[ .-])\d{3}[ .-]\d{4}")
_DATE = regex.compile(
    r"(?<!\d)(?:(?:19|20)\d\d[-./](?:0?[1-9]|1[0-2])[-./](?:0?[1-9]|[12]\d|3[01])"
    r"|(?:0?[1-9]|[12]\d|3[01])[-./](?:0?[1-9]|1[0-2])[-./](?:19|20)\d\d"
    r"|(?:0?[1-9]|1[0-2])[-./](?:0?[1-9]|[12]\d|3[01])[-./](?:19|20)\d\d)(?!\d)"
)
_QUAD = regex.compile(r"\d{1,3}(?:\.\d{1,3}){3}")
# A number followed by a street name is a house number ("17031 2202 Rissik St").
_STREET_AFTER = regex.compile(
    r"\s+(?:[^\W\d][\w'.-]*\s+){0,3}(?:street|st|avenue|ave|road|rd|boulevard|blvd|lane|ln|drive|dr|"
    r"way|court|ct|place|pl|square|sq|terrace|highway|hwy|parkway|pkwy|strasse|straße|rue|via|calle)\b",
    FLAGS,
)


class PhoneRecognizer(SpanRecognizer):
    ENTITY = "PHONE_NUMBER"
    PATTERN = regex.compile(
        r"(?<![\w+@/.:#-])(?:\+|\(\+?)?\d[\d().\-/ ]{4,28}\d(?:\s?(?:x|ext\.?|extension)\s?\d{1,6})?"
        r"(?![\w@]|[.\-/]\d)",
        FLAGS,
    )
    STARTS = re.compile(r"(?<![0-9A-Za-z+@/.:#-])(?=[+(]|\d)")
    MAX_LEN = 2 + 30 + 18
    LEFT = 40
    RIGHT = 24
    CUES = Cues.of(
        r"phones?|telephone|tel|mobile|mob|cell|cellphone|fax|call|calls|called|calling|dial|ring|"
        r"text|sms|whatsapp|signal|viber|telegram|contact|reach|hotline|helpline|landline|office|desk|"
        r"voicemail|messages?|answering|number(?! of)",
        NOT_PERSONAL
        + "|"
        + with_number(
            r"account|acct|iban|routing|sort code|swift|bic|cards?|cc|ssn|social security|zip|postal|"
            r"postcode|pin|otp|passcode|code|amount|total|price|cost"
        ),
        before=40,
        after=16,
    )

    def judge(self, text: str, match: regex.Match[str]) -> tuple[int, int, float] | None:
        raw = match.group()
        main = _EXTENSION.sub("", raw)
        if not _well_formed(main) or _DATE.search(main) or _QUAD.fullmatch(main):
            return None
        if _STREET_AFTER.match(text, match.end(), match.end() + self.RIGHT):
            return None
        digits = "".join(char for char in main if char.isdigit())
        if len(set(digits)) == 1:
            return None
        score = _shape_score(main, digits)
        if score is None:
            return None
        cue = self.CUES.nearest(text, match.start(), match.end())
        return match.start(), match.end(), cued(score, cue, 0.4)


def _well_formed(main: str) -> bool:
    """Digit groups joined by one separator (space, dash, dot or slash), or directly next to a
    short group in parentheses ("(0)8", "(579)888-3058"); a "+" only at the start."""
    pieces = _PIECE.findall(main)
    if "".join(pieces) != main:
        return False
    want_group = True
    for index, piece in enumerate(pieces):
        if piece == "+":
            if index:
                return False
        elif piece in _SEPARATORS:
            if want_group:
                return False
            want_group = True
        else:
            if not want_group and not (piece[0] == "(" or pieces[index - 1][0] == "("):
                return False
            want_group = False
    return not want_group


def _shape_score(main: str, digits: str) -> float | None:
    international = main.startswith(("+", "(+")) or (main.startswith("00") and len(digits) >= 9)
    national = digits[2:] if main.startswith("00") else digits
    if not 7 <= len(national) <= 15:
        return None
    if international:
        try:
            number = phonenumbers.parse("+" + national if main.startswith("00") else main, None)
        except phonenumbers.NumberParseException:
            return 0.35
        if phonenumbers.is_valid_number(number):
            return 0.75
        return 0.4 if phonenumbers.is_possible_number(number) else 0.35
    if _NANP.fullmatch(main):
        try:
            number = phonenumbers.parse(main, "US")
        except phonenumbers.NumberParseException:
            return 0.35
        return 0.6 if phonenumbers.is_valid_number(number) else 0.35
    return 0.35 if any(not char.isdigit() for char in main) else 0.2
