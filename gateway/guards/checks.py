"""Checksums and cue words that decide whether a pattern match is really personal data.

Pure functions over strings, shared by the recognizers: Luhn for card numbers, ISO 13616 mod-97
for IBANs, the SSA's rules for SSNs, Shannon entropy for secrets, and the nearest cue word before
(or after) a match, which raises or vetoes a score the way a reader would ("call me at ...",
"invoice no. ...").
"""

from __future__ import annotations

import itertools
import math
from collections import Counter
from dataclasses import dataclass
from typing import Literal

import regex

# ISO 13616 IBAN lengths by country (SWIFT IBAN registry).
IBAN_LENGTHS: dict[str, int] = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22, "BH": 22, "BI": 27,
    "BR": 29, "BY": 28, "CH": 21, "CR": 22, "CY": 28, "CZ": 24, "DE": 22, "DJ": 27, "DK": 18, "DO": 28,
    "EE": 20, "EG": 29, "ES": 24, "FI": 18, "FK": 18, "FO": 18, "FR": 27, "GB": 22, "GE": 22, "GI": 23,
    "GL": 18, "GR": 27, "GT": 28, "HR": 21, "HU": 28, "IE": 22, "IL": 23, "IQ": 23, "IS": 26, "IT": 27,
    "JO": 30, "KW": 30, "KZ": 20, "LB": 28, "LC": 32, "LI": 21, "LT": 20, "LU": 20, "LV": 21, "LY": 25,
    "MC": 27, "MD": 24, "ME": 22, "MK": 19, "MN": 20, "MR": 27, "MT": 31, "MU": 30, "NI": 28, "NL": 18,
    "NO": 15, "OM": 23, "PK": 24, "PL": 28, "PS": 29, "PT": 25, "QA": 29, "RO": 24, "RS": 22, "RU": 33,
    "SA": 24, "SC": 31, "SD": 18, "SE": 24, "SI": 19, "SK": 24, "SM": 27, "SO": 23, "ST": 25, "SV": 28,
    "TL": 23, "TN": 24, "TR": 26, "UA": 29, "VA": 22, "VG": 24, "XK": 20, "YE": 30,
}  # fmt: skip

# Card networks by issuer prefix range (inclusive, compared on the first len(low) digits) and lengths.
_CARD_NETWORKS: tuple[tuple[str, str, tuple[int, ...]], ...] = (
    ("4", "4", (13, 16, 19)),  # Visa
    ("51", "55", (16,)),  # Mastercard
    ("2221", "2720", (16,)),  # Mastercard 2-series (2017 on)
    ("34", "34", (15,)),  # American Express
    ("37", "37", (15,)),
    ("300", "305", (14, 16, 19)),  # Diners Club
    ("36", "36", (14, 16, 19)),
    ("38", "39", (14, 16, 19)),
    ("6011", "6011", (16, 19)),  # Discover
    ("644", "649", (16, 19)),
    ("65", "65", (16, 19)),
    ("3528", "3589", (16, 19)),  # JCB
    ("2131", "2131", (15,)),
    ("1800", "1800", (15,)),
    ("62", "62", (16, 17, 18, 19)),  # UnionPay
    ("2200", "2204", (16, 17, 18, 19)),  # Mir
    ("50", "50", tuple(range(12, 20))),  # Maestro
    ("56", "69", tuple(range(12, 20))),
)


def luhn_valid(digits: str) -> bool:
    total = 0
    for position, char in enumerate(reversed(digits)):
        value = ord(char) - 48
        if position % 2:
            value = value * 2 - 9 if value > 4 else value * 2
        total += value
    return total % 10 == 0


def known_card_network(digits: str) -> bool:
    """Whether the number has an issuer prefix and length some card network uses."""
    for low, high, lengths in _CARD_NETWORKS:
        if len(digits) in lengths and low <= digits[: len(low)] <= high:
            return True
    return False


def iban_valid(compact: str) -> bool:
    """An IBAN without spaces: known country, its exact length, and the mod-97 check."""
    code = compact.upper()
    if IBAN_LENGTHS.get(code[:2]) != len(code) or not code[2:4].isdigit():
        return False
    rearranged = code[4:] + code[:4]
    number = "".join(str(int(char, 36)) for char in rearranged)
    return int(number) % 97 == 1


def ssn_valid(area: str, group: str, serial: str) -> bool:
    """SSA rules: no area 000, 666 or 9xx, no group 00, no serial 0000, none of the famous samples."""
    if area in ("000", "666") or area[0] == "9" or group == "00" or serial == "0000":
        return False
    number = area + group + serial
    return len(set(number)) > 1 and number not in ("123456789", "078051120", "219099999")


# The most frequent letter pairs of English (and of the identifiers made from it): about half the
# pairs of a word, about a tenth of the pairs of a random string.
_PAIRS = (
    "th he in er an re on at en nd ti es or te of ed is it al ar st to nt ng se ha as ou io le ve co me de "
    "hi ri ro ic ne ea ra ce li ch ll be ma si om ur ca el ta la ns ge ly ei os no pe do su pa ec ac ot di "
    "ol tr sh ct wa us ss ie lo ke ck ex ad pr ow fo ut im"
)
_COMMON_PAIRS = frozenset(_PAIRS.split())


def wordlike_share(text: str) -> float:
    """Share of neighbouring letter pairs that are common in English: high for an identifier such as
    ``TheQuickBrownFox123``, low for a random key."""
    pairs = [(a + b).lower() for a, b in itertools.pairwise(text) if a.isalpha() and b.isalpha()]
    if len(pairs) < 6:
        return 0.0
    return sum(pair in _COMMON_PAIRS for pair in pairs) / len(pairs)


def shannon_entropy(text: str) -> float:
    """Bits per character of the string's own character distribution."""
    counts = Counter(text)
    size = len(text)
    return -sum(n / size * math.log2(n / size) for n in counts.values())


# Words before a number that say it is an identifier of a thing, not of a person; "<word> number"
# counts as one cue, so "invoice number" vetoes where "number" alone may not.
NOT_PERSONAL = (
    r"(?:(?:invoice|inv|order|po|part|p/n|pn|sku|serial|s/n|model|version|ver|build|release|firmware|"
    r"ref|reference|ticket|tracking|isbn|issn|doi|patent|item|product|catalog(?:ue)?|lot|batch|"
    r"article|receipt|confirmation|booking|reservation|quote|quotation)(?:\s(?:number|no\.?|num|#|id))?)|"
    r"(?:case|claim|policy|member|customer|client|employee|student|passport|licen[cs]e|tax|vat|"
    r"registration|id|account|transaction)\s(?:number|no\.?|num|#|id)"
)


def with_number(words: str) -> str:
    """``words``, each optionally followed by "number", "no.", "#" or "id", as one cue."""
    return rf"(?:{words})(?:\s(?:number|no\.?|num|#|id))?"


# Where a cue stops counting: the end of a clause or a sentence (not "Tel." before a number).
_CLAUSE_END = regex.compile(r";|[.!?](?=\s+[A-Z])")

Cue = Literal["positive", "negative"]


@dataclass(frozen=True, slots=True)
class Cues:
    """Cue words for one entity type, looked for within ``before`` characters before a match and
    ``after`` characters after it. The cue nearest the match decides."""

    pattern: regex.Pattern[str]
    before: int
    after: int

    @classmethod
    def of(cls, positive: str, negative: str = NOT_PERSONAL, *, before: int = 40, after: int = 0) -> Cues:
        words = rf"(?<![^\W_]|/)(?:(?P<negative>{negative})|(?P<positive>{positive}))(?![^\W_]|/)"
        return cls(regex.compile(words, regex.IGNORECASE), before, after)

    def nearest(self, text: str, start: int, end: int) -> Cue | None:
        """The cue nearest before the match within its clause, else the first one after it."""
        begin = max(0, start - self.before)
        for boundary in _CLAUSE_END.finditer(text, begin, start):
            begin = boundary.end()
        last: Cue | None = None
        for cue in self.pattern.finditer(text, begin, start):
            last = "negative" if cue.group("negative") is not None else "positive"
        if last is not None or not self.after:
            return last
        stop = min(len(text), end + self.after)
        clause_end = _CLAUSE_END.search(text, end, stop)
        found = self.pattern.search(text, end, clause_end.start() if clause_end else stop)
        if found is None:
            return None
        return "negative" if found.group("negative") is not None else "positive"
