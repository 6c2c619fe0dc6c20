"""Presidio recognizers for the gaps in its defaults, each one local by construction.

Every recognizer here finds candidates with one bounded regular expression scanned at every
position (``overlapped``), so a candidate depends only on the text within ``MAX_LEN`` characters
of it plus ``LEFT`` characters of cue words before and ``RIGHT`` characters after. That locality
is what lets the stream redactor hold back a bounded window and still match whole-text redaction
exactly: ``open_start`` tells it where the earliest candidate that later text could change begins.

Scores follow one scale: about 0.6 and up is a match on shape and checksum alone, weak shapes sit
at 0.2 to 0.4 and need a cue word (``checks.Cues``) to pass the default threshold of 0.5, and a
cue such as "invoice" or "version" right before a number vetoes it.
"""

from __future__ import annotations

import functools
import ipaddress
import re
import threading
import time
from abc import abstractmethod
from typing import Any, ClassVar

import regex
import tldextract

from gateway.guards.checks import Cues, iban_valid, known_card_network, luhn_valid, ssn_valid
from gateway.guards.presidio import LocalRecognizer, RecognizerResult

FLAGS = regex.IGNORECASE | regex.VERSION1

# The time by which the analysis running on this thread must end (``PiiAnalyzer.run`` sets it), so
# an analysis that timed out stops soon instead of keeping a worker thread busy.
_DEADLINE = threading.local()


def set_deadline(deadline: float | None) -> None:
    _DEADLINE.at = deadline


def check_deadline() -> None:
    deadline: float | None = getattr(_DEADLINE, "at", None)
    if deadline is not None and time.monotonic() > deadline:
        raise TimeoutError("PII analysis took longer than its timeout")


class SpanRecognizer(LocalRecognizer):
    """Base: one entity type, one bounded pattern, a ``judge`` that scores or rejects each match.

    ``STARTS`` (the standard library's fast engine) finds every position where a match can begin;
    it may find more (``PATTERN`` decides), never fewer. Matching ``PATTERN`` at each of them is the
    same as scanning it at every position, only cheaper.
    """

    ENTITY: ClassVar[str]
    PATTERN: ClassVar[regex.Pattern[str]]
    STARTS: ClassVar[re.Pattern[str]]
    MAX_LEN: ClassVar[int]  # longest match the pattern can produce
    LEFT: ClassVar[int] = 0  # characters before a match that can change its score
    RIGHT: ClassVar[int] = 2  # characters after a match that can extend it or change its score

    def __init__(self, timeout_s: float | None = None) -> None:
        self.timeout_s = timeout_s
        super().__init__(supported_entities=[self.ENTITY], name=type(self).__name__)

    def load(self) -> None:
        """Nothing to load: the pattern is compiled with the class."""

    @abstractmethod
    def judge(self, text: str, match: regex.Match[str]) -> tuple[int, int, float] | None:
        """(start, end, score) of the entity this match holds, or None."""

    def analyze(self, text: str, entities: list[str], nlp_artifacts: Any = None) -> list[RecognizerResult]:
        results = []
        for start in self.STARTS.finditer(text):
            check_deadline()
            match = self.PATTERN.match(text, start.start(), concurrent=True, timeout=self.timeout_s)
            found = self.judge(text, match) if match is not None else None
            if found is not None and found[2] > 0:
                begin, end, score = found
                results.append(
                    RecognizerResult(
                        self.ENTITY, begin, end, min(score, 1.0), recognition_metadata=self._meta
                    )
                )
        return results

    def open_start(self, text: str, low: int) -> int | None:
        """Start of the earliest candidate at or after ``low`` that more text could still change:
        a match cut short by the end of the text, or one that ends within ``RIGHT`` of it."""
        size = len(text)
        begin = max(low, size - self.MAX_LEN - self.RIGHT)
        found: int | None = None
        for start in self.STARTS.finditer(text, begin):
            check_deadline()
            match = self.PATTERN.match(
                text, start.start(), partial=True, concurrent=True, timeout=self.timeout_s
            )
            if match is not None and (match.partial or match.end() + self.RIGHT >= size):
                found = match.start()
                break
        # A match cut short may begin where STARTS cannot tell yet ("bob.sm" before its "@"); such
        # a match has no space in it so far, so it lies within the text's last word.
        last_word = _last_word(text, begin)
        for match in self.PATTERN.finditer(
            text, last_word, overlapped=True, partial=True, concurrent=True, timeout=self.timeout_s
        ):
            if found is not None and match.start() >= found:
                break
            if match.partial and match.start() < size:
                return match.start()
        return found

    @property
    def _meta(self) -> dict[str, str]:
        return {
            RecognizerResult.RECOGNIZER_NAME_KEY: type(self).__name__,
            RecognizerResult.RECOGNIZER_IDENTIFIER_KEY: self.id,
        }


def _last_word(text: str, begin: int) -> int:
    """Start of the run of characters after the text's last ASCII space (at least ``begin``). Other
    spaces only make the run longer, so it still holds every match cut short by the end."""
    return max(begin, *(text.rfind(space, begin) + 1 for space in " \t\n\r\f\v"))


def cued(score: float, cue: str | None, boost: float) -> float:
    if cue == "negative":
        return 0.0
    return score + boost if cue == "positive" else score


class EmailRecognizer(SpanRecognizer):
    """RFC 5321 lengths (local part up to 64, labels up to 63) and a public suffix as the TLD."""

    ENTITY = "EMAIL_ADDRESS"
    PATTERN = regex.compile(
        r"(?<![\w.!#$%&'*+/=?^`{|}~-])[\w!#$%&'*+/=?^`{|}~-](?:[\w.!#$%&'*+/=?^`{|}~-]{0,62}[\w!#$%&'*+/=?^`{|}~-])?"
        r"@(?:[^\W_](?:[\w-]{0,61}[^\W_])?\.){1,8}[^\W\d_]{2,63}(?![\w-]|\.[^\W_])",
        FLAGS,
    )
    STARTS = re.compile(r"(?=[^\s@]{1,64}@)")
    MAX_LEN = 64 + 1 + 9 * 64

    def judge(self, text: str, match: regex.Match[str]) -> tuple[int, int, float] | None:
        domain = match.group().rsplit("@", 1)[1]
        return match.start(), match.end(), 0.9 if _public_suffix(domain.lower()) else 0.4


class CreditCardRecognizer(SpanRecognizer):
    """12-19 digits, Luhn-valid, optionally grouped by spaces or dashes; Mastercard's 2-series too."""

    ENTITY = "CREDIT_CARD"
    PATTERN = regex.compile(r"(?<![\w+.,/-])\d(?:[ -]?\d){11,18}(?![\w]|[.,-]\d)", FLAGS)
    STARTS = re.compile(r"(?<![0-9A-Za-z+.,/-])(?=\d)")
    MAX_LEN = 19 * 2
    LEFT = 40
    CUES = Cues.of(
        r"cards?|credit|debit|cc|visa|mastercard|amex|american express|maestro|discover|jcb|diners|unionpay|"
        r"payment|pay|pan|cvv|cvc|expir\w*|billing|charged?"
    )

    def judge(self, text: str, match: regex.Match[str]) -> tuple[int, int, float] | None:
        raw = match.group()
        for end in _group_ends(raw):
            candidate = raw[:end]
            digits = candidate.replace(" ", "").replace("-", "")
            separators = {char for char in candidate if not char.isdigit()}
            groups = regex.split(r"[ -]", candidate)
            if len(digits) < 12 or len(separators) > 1 or min(len(g) for g in groups) < 3:
                continue
            if len(set(digits)) == 1 or not luhn_valid(digits):
                continue
            base = 0.7 if known_card_network(digits) else 0.3
            cue = self.CUES.nearest(text, match.start(), match.start() + end)
            return match.start(), match.start() + end, cued(base, cue, 0.25)
        return None


# Dashes are how SSNs are written; other separators or none need a cue.
_SSN_BASE = {"-": 0.6, " ": 0.4, ".": 0.4, "": 0.15}


class UsSsnRecognizer(SpanRecognizer):
    """SSNs with dashes on their own; with spaces, dots or no separator only after an SSN cue."""

    ENTITY = "US_SSN"
    PATTERN = regex.compile(r"(?<![\w+./-])(\d{3})([- .]?)(\d{2})\2(\d{4})(?![\w]|[-.]\d)", FLAGS)
    STARTS = re.compile(r"(?<![0-9A-Za-z+./-])(?=\d{3})")
    MAX_LEN = 11
    LEFT = 40
    CUES = Cues.of(r"ssn|ssns|ss#|ss no|social security(?: number| no)?|social sec|sozialversicherungs\w*")

    def judge(self, text: str, match: regex.Match[str]) -> tuple[int, int, float] | None:
        if not ssn_valid(match.group(1), match.group(3), match.group(4)):
            return None
        cue = self.CUES.nearest(text, match.start(), match.end())
        return match.start(), match.end(), cued(_SSN_BASE[match.group(2)], cue, 0.35)


class IbanRecognizer(SpanRecognizer):
    """IBANs, compact or in groups of four, any case: known country length and the mod-97 check."""

    ENTITY = "IBAN_CODE"
    PATTERN = regex.compile(
        r"(?<![\w-])[A-Za-z]{2}\d{2}(?: ?[A-Za-z0-9]{4}){2,7}(?: ?[A-Za-z0-9]{1,4})?(?![\w-])", regex.VERSION1
    )
    STARTS = re.compile(r"(?=[A-Za-z]{2}\d{2})")
    MAX_LEN = 4 + 7 * 5 + 5

    def judge(self, text: str, match: regex.Match[str]) -> tuple[int, int, float] | None:
        raw = match.group()
        for end in _group_ends(raw):
            if iban_valid(raw[:end].replace(" ", "")):
                return match.start(), match.start() + end, 0.95
        return None


_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
_H = r"[0-9a-fA-F]{1,4}"
_IPV6 = (
    rf"(?:{_H}:){{7}}{_H}|(?:{_H}:){{1,7}}:|(?:{_H}:){{1,6}}:{_H}|(?:{_H}:){{1,5}}(?::{_H}){{1,2}}"
    rf"|(?:{_H}:){{1,4}}(?::{_H}){{1,3}}|(?:{_H}:){{1,3}}(?::{_H}){{1,4}}|(?:{_H}:){{1,2}}(?::{_H}){{1,5}}"
    rf"|{_H}:(?::{_H}){{1,6}}|:(?::{_H}){{1,7}}|(?:{_H}:){{6}}{_OCTET}(?:\.{_OCTET}){{3}}|::ffff:{_OCTET}(?:\.{_OCTET}){{3}}"
)


class IpAddressRecognizer(SpanRecognizer):
    """IPv4 and IPv6 addresses (with an optional prefix length); not after "version" and the like,
    and only with a cue when the address is a netmask, loopback or unspecified."""

    ENTITY = "IP_ADDRESS"
    PATTERN = regex.compile(
        rf"(?:(?<![\w.-])(?<!\d:){_OCTET}(?:\.{_OCTET}){{3}}(?:/(?:3[0-2]|[12]?\d))?(?![\w]|\.\d)"
        rf"|(?<![\w.:-])(?:{_IPV6})(?:%[0-9A-Za-z]{{1,15}})?(?:/(?:12[0-8]|1[01]\d|[1-9]?\d))?(?![\w:.]))",
        regex.VERSION1,
    )
    STARTS = re.compile(r"(?=\d|[0-9A-Fa-f]{1,4}:|:)")
    MAX_LEN = 45 + 16 + 4
    LEFT = 40
    RIGHT = 18  # a zone ("%eth0") or prefix length may still follow
    CUES = Cues.of(
        r"ip|ipv4|ipv6|ip address|address|addr|host|hostname|server|client|ping|subnet|gateway|dns|"
        r"proxy|vpn|connect(?:ed|ing)?|login|logged in|remote|peer|source|src|dst|origin"
    )

    def judge(self, text: str, match: regex.Match[str]) -> tuple[int, int, float] | None:
        literal = match.group().split("/", 1)[0].split("%", 1)[0]
        try:
            address = ipaddress.ip_address(literal)
        except ValueError:
            return None
        if address.version == 6 and (literal.count(":") < 2 or sum(c.isalnum() for c in literal) < 4):
            return None
        special = address.is_loopback or address.is_unspecified or address.is_multicast or _netmask(literal)
        cue = self.CUES.nearest(text, match.start(), match.end())
        return match.start(), match.end(), cued(0.3 if special else 0.6, cue, 0.3)


# The public suffix list bundled with tldextract; never fetched.
_SUFFIXES = tldextract.TLDExtract(cache_dir=None, suffix_list_urls=(), fallback_to_snapshot=True)


@functools.lru_cache(maxsize=4096)
def _public_suffix(domain: str) -> bool:
    return bool(_SUFFIXES(domain).suffix)


def _netmask(literal: str) -> bool:
    if "." not in literal or ":" in literal:
        return False
    bits = "".join(f"{int(octet):08b}" for octet in literal.split("."))
    return "01" not in bits


def _group_ends(raw: str) -> list[int]:
    """Ends to try for a grouped number, longest first: the whole match, then one group less, ...

    A greedy match can swallow a following group that is not part of the number ("... 1111 20").
    """
    ends = [len(raw)]
    ends += [index for index in range(len(raw) - 1, 0, -1) if raw[index] in " -" and raw[index - 1].isalnum()]
    return ends
