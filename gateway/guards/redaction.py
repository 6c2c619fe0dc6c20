"""Redaction per role: which spans become what, and the whole-text ``Redactor``.

Overlapping spans merge into one region (so a phone number inside a card number never leaves a
digit behind), labelled with the type of its most confident span. The operators:

* ``mask``: ``<EMAIL_ADDRESS>``;
* ``replace``: the policy's fixed text;
* ``hash``: ``<EMAIL_ADDRESS:1f0c9a7e3b52d4c8>``, HMAC-SHA256 under ``guards.pii.hash_key``: the same
  value always gives the same token, and without the key nobody can test a guess;
* ``encrypt``: ``<EMAIL_ADDRESS:key-id:...>``, AES-256-GCM under the current encryption key, for
  authorized de-anonymization with ``reveal``. The nonce is derived from the value (a synthetic IV),
  so equal values give equal tokens, exactly like ``hash``, and streamed output can equal
  whole-text output. That determinism reveals which spans are equal and nothing else.

Every operator's output is a deterministic function of the region's text and type, so redacting a
text in pieces gives the same result as redacting it whole.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import regex
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from pydantic import SecretStr

from gateway.guards.pii import GuardUnavailable, PiiAnalyzer, PiiSpan
from gateway.guards.settings import PiiSettings, key_bytes
from gateway.policy.schema import PiiGuard

_NUMERIC = frozenset({"CREDIT_CARD", "US_SSN", "IBAN_CODE", "PHONE_NUMBER"})
_TOKEN = regex.compile(r"<([A-Z][A-Z_]*):([A-Za-z0-9_-]{1,32}):([A-Za-z0-9_-]{24,})>")


@dataclass(frozen=True, slots=True)
class Region:
    """A stretch of text to replace: one or more overlapping spans."""

    start: int
    end: int
    entity_type: str


def merge(spans: Sequence[PiiSpan]) -> list[Region]:
    """Overlapping spans joined into regions, in text order; each labelled by its most confident
    span (then the longest, then the type name), so the label depends on the region alone."""
    ordered = sorted(spans, key=lambda span: (span.start, span.end))
    regions: list[Region] = []
    group: list[PiiSpan] = []
    end = -1
    for span in ordered:
        if group and span.start >= end:
            regions.append(_region(group))
            group = []
        end = max(end, span.end) if group else span.end
        group.append(span)
    if group:
        regions.append(_region(group))
    return regions


def _region(group: list[PiiSpan]) -> Region:
    best = max(group, key=lambda span: (span.score, span.end - span.start, span.entity_type))
    return Region(min(s.start for s in group), max(s.end for s in group), best.entity_type)


class Operator:
    """Turns a region's text into its replacement, per the policy's operator and the gateway's keys."""

    def __init__(self, policy: PiiGuard, settings: PiiSettings) -> None:
        self.kind = policy.operator
        self.replacement = policy.replacement
        self._hash_key = b""
        self._key_id = ""
        self._aead: AESGCM | None = None
        self._nonce_key = b""
        if self.kind == "hash":
            if settings.hash_key is None:
                raise GuardUnavailable()  # the policy asks for hashing but the gateway has no key
            self._hash_key = key_bytes(settings.hash_key, "hash_key")
        elif self.kind == "encrypt":
            if settings.encryption_key_id is None:
                raise GuardUnavailable()  # the policy asks for encryption but the gateway has no key
            self._key_id = settings.encryption_key_id
            encrypt_key, self._nonce_key = _derive(settings.encryption_keys[self._key_id])
            self._aead = AESGCM(encrypt_key)

    def __call__(self, value: str, entity_type: str) -> str:
        if self.kind == "mask":
            return f"<{entity_type}>"
        if self.kind == "replace":
            return self.replacement
        canonical = _canonical(value, entity_type).encode()
        label = entity_type.encode() + b"\0"
        if self.kind == "hash":
            digest = hmac.new(self._hash_key, label + canonical, hashlib.sha256).hexdigest()
            return f"<{entity_type}:{digest[:16]}>"
        if self._aead is None:  # unreachable: encrypt always has a key
            raise GuardUnavailable()
        nonce = hmac.new(self._nonce_key, label + value.encode(), hashlib.sha256).digest()[:12]
        sealed = self._aead.encrypt(nonce, value.encode(), _aad(entity_type, self._key_id))
        return f"<{entity_type}:{self._key_id}:{_b64(nonce + sealed)}>"


def render(text: str, regions: Sequence[Region], operator: Operator, offset: int = 0) -> str:
    """``text`` (which starts at ``offset`` of the whole) with every region replaced."""
    pieces = []
    position = 0
    for region in regions:
        start, end = region.start - offset, region.end - offset
        pieces.append(text[position:start])
        pieces.append(operator(text[start:end], region.entity_type))
        position = end
    pieces.append(text[position:])
    return "".join(pieces)


@dataclass(frozen=True, slots=True)
class Redacted:
    text: str
    counts: dict[str, int]  # regions redacted, by entity type


class Redactor:
    """Per request: the analyzer, the caller's merged PII policy and its operator. ``counts`` adds up
    everything this redactor (and its stream redactors) redacted, for the audit record."""

    def __init__(self, analyzer: PiiAnalyzer, policy: PiiGuard) -> None:
        if analyzer.unsupported(policy):
            raise GuardUnavailable()  # e.g. PERSON without a spaCy model: never pretend to redact
        self.analyzer = analyzer
        self.policy = policy
        self.operator = Operator(policy, analyzer.settings)
        self.counts: Counter[str] = Counter()
        self.first_ns = 0  # when redaction first ran (epoch ns), and its time spent so far
        self.busy_ns = 0

    def redact(self, text: str) -> Redacted:
        started = time.time_ns()
        regions = merge(self.analyzer.analyze(text, self.policy))
        counts = Counter(region.entity_type for region in regions)
        self.counts.update(counts)
        redacted = Redacted(render(text, regions, self.operator), dict(counts))
        self.note_work(started)
        return redacted

    def note_work(self, started_ns: int) -> None:
        """Add the time since ``started_ns`` to this redactor's (and its stream redactors') work."""
        self.first_ns = self.first_ns or started_ns
        self.busy_ns += time.time_ns() - started_ns

    async def redact_async(self, text: str) -> Redacted:
        """``redact`` on the analyzer's threads, with its timeout (GuardUnavailable on failure)."""
        return await self.analyzer.run(self.redact, text)


class TokenError(ValueError):
    """A token that cannot be decrypted: unknown key, or altered."""


def reveal(text: str, keys: Mapping[str, SecretStr]) -> str:
    """``text`` with every encrypted token turned back into its value (authorized de-anonymization).
    Tokens whose key is not given stay as they are; an altered token raises TokenError."""

    def plain(match: regex.Match[str]) -> str:
        key_id = match.group(2)
        if key_id not in keys:
            return match.group()
        return decrypt_token(match.group(), keys)[1]

    return _TOKEN.sub(plain, text)


def decrypt_token(token: str, keys: Mapping[str, SecretStr]) -> tuple[str, str]:
    """(entity type, value) of one ``<TYPE:key-id:...>`` token from the ``encrypt`` operator."""
    match = _TOKEN.fullmatch(token)
    if match is None:
        raise TokenError("not an encrypted PII token")
    entity_type, key_id, payload = match.groups()
    if key_id not in keys:
        raise TokenError(f"no key with id '{key_id}'")
    encrypt_key, _ = _derive(keys[key_id])
    raw = base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
    try:
        value = AESGCM(encrypt_key).decrypt(raw[:12], raw[12:], _aad(entity_type, key_id))
    except InvalidTag:
        raise TokenError("the token was altered or belongs to another key") from None
    return entity_type, value.decode()


def _derive(key: SecretStr) -> tuple[bytes, bytes]:
    """Separate keys for encryption and for the synthetic nonce, from one configured key."""
    material = HKDF(SHA256(), 64, salt=None, info=b"warden pii encrypt v1").derive(key_bytes(key, "key"))
    return material[:32], material[32:]


def _aad(entity_type: str, key_id: str) -> bytes:
    return f"warden-pii:{entity_type}:{key_id}".encode()


def _canonical(value: str, entity_type: str) -> str:
    """One spelling per value for hashing: case-folded, and digits and letters only for numbers."""
    folded = value.strip().casefold()
    return "".join(c for c in folded if c.isalnum() or c == "+") if entity_type in _NUMERIC else folded


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
