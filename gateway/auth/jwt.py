"""Verify one JWS-signed JWT against candidate keys, stricter than the JWT libraries by default.

``parse_unverified`` checks the shape (size, three canonical base64url segments, JSON objects
without duplicate members) before anything trusts the content; its result only selects the
issuer and candidate keys. ``verify_token`` then checks the signature with PyJWT, using the
algorithms configured on each key, and validates the claims with PyJWT plus our own checks where
PyJWT is lenient (exact ``iss``, numeric time claims, non-empty ``sub``, no ``crit``).

Every refusal raises ``TokenRejected`` whose ``reason`` is a fixed phrase, safe to log: it never
holds the token or a claim value.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import jwt

from gateway.auth.keys import VerificationKey
from gateway.auth.settings import IssuerSettings

_SEGMENT = re.compile(r"[A-Za-z0-9_-]+")
# Header parameters we refuse outright: `crit` names extensions we do not implement, and
# `b64: false` (RFC 7797) changes what the signature covers.
_REFUSED_HEADERS = ("crit", "b64")
_TIME_CLAIMS = ("exp", "nbf", "iat")


class TokenRejected(Exception):
    """The token is not acceptable; ``reason`` is a fixed phrase without token data."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class UnverifiedToken:
    """Header and payload of a well-formed token whose signature has not been checked yet."""

    header: dict[str, Any]
    payload: dict[str, Any]

    @property
    def alg(self) -> str:
        alg: str = self.header["alg"]
        return alg

    @property
    def kid(self) -> str | None:
        kid: str | None = self.header.get("kid")
        return kid


def parse_unverified(token: str, max_bytes: int) -> UnverifiedToken:
    """Split and decode ``token`` strictly; the size is checked before any parsing."""
    if len(token) > max_bytes:
        raise TokenRejected("token too large")
    if not token.isascii():
        raise TokenRejected("malformed token")
    segments = token.split(".")
    if len(segments) != 3:
        raise TokenRejected("malformed token")
    header_bytes, payload_bytes, _signature = (_b64decode(segment) for segment in segments)
    header = _json_object(header_bytes, "header")
    payload = _json_object(payload_bytes, "payload")
    _check_header(header)
    return UnverifiedToken(header, payload)


def _b64decode(segment: str) -> bytes:
    # Unpadded base64url only, and canonical: one token string per signed byte sequence.
    if not _SEGMENT.fullmatch(segment) or len(segment) % 4 == 1:
        raise TokenRejected("malformed segment")
    try:
        data = base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    except (binascii.Error, ValueError):
        raise TokenRejected("malformed segment") from None
    if base64.urlsafe_b64encode(data).rstrip(b"=") != segment.encode("ascii"):
        raise TokenRejected("non-canonical segment")
    return data


def _json_object(data: bytes, part: str) -> dict[str, Any]:
    try:
        value = json.loads(data, object_pairs_hook=_no_duplicates, parse_constant=_no_constants)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise TokenRejected(f"malformed {part}") from None
    if not isinstance(value, dict):
        raise TokenRejected(f"malformed {part}")
    return value


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        raise ValueError("duplicate member")
    return result


def _no_constants(_name: str) -> Any:
    raise ValueError("NaN and Infinity are not JSON")


def _check_header(header: dict[str, Any]) -> None:
    alg = header.get("alg")
    if not isinstance(alg, str) or not alg:
        raise TokenRejected("missing alg")
    if alg.lower() == "none":
        raise TokenRejected("unsigned token (alg none)")
    for name in _REFUSED_HEADERS:
        if name in header:
            raise TokenRejected(f"unsupported header {name}")
    kid = header.get("kid")
    if kid is not None and not isinstance(kid, str):
        raise TokenRejected("malformed kid")


def verify_token(
    token: str,
    unverified: UnverifiedToken,
    keys: Sequence[VerificationKey],
    issuer: IssuerSettings,
    now: float,
) -> dict[str, Any]:
    """The verified claims of ``token``, signed by one of ``keys`` with an algorithm that key allows."""
    alg = unverified.alg
    usable = [key for key in keys if alg in key.algorithms]
    if not usable:
        raise TokenRejected("no key allows this algorithm and kid")
    for key in usable:
        try:
            claims = jwt.decode(
                token,
                key.key,
                algorithms=[alg],
                audience=issuer.audiences,
                issuer=issuer.issuer,
                leeway=issuer.leeway_s,
                options={"require": list(issuer.required_claims)},
            )
        except jwt.InvalidSignatureError:
            continue  # another candidate key may have signed it
        except jwt.PyJWTError as exc:
            # Refused either way; PyJWT checks claims after the signature, so the payload is
            # authentic here and our checks can name the precise reason for the debug log.
            check_claims(unverified.payload, issuer, now)
            raise TokenRejected(_reason(exc)) from None
        check_claims(claims, issuer, now)
        return claims
    raise TokenRejected("signature does not verify")


def check_claims(claims: dict[str, Any], issuer: IssuerSettings, now: float) -> None:
    """Our own claim checks, on top of PyJWT's: exact types and values, no lenient coercion."""
    for name in issuer.required_claims:
        if claims.get(name) is None:
            raise TokenRejected("missing required claim")
    if claims.get("iss") != issuer.issuer:
        raise TokenRejected("wrong issuer")
    _check_audience(claims.get("aud"), issuer.audiences)
    subject = claims.get("sub")
    if not isinstance(subject, str) or not subject:
        raise TokenRejected("sub is not a non-empty string")
    times: dict[str, float] = {}
    for name in _TIME_CLAIMS:
        if name in claims:
            value = claims[name]
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise TokenRejected(f"{name} is not a number")
            times[name] = float(value)
    leeway = issuer.leeway_s
    if "exp" in times and times["exp"] <= now - leeway:
        raise TokenRejected("expired")
    if "nbf" in times and times["nbf"] > now + leeway:
        raise TokenRejected("not yet valid")
    if "iat" in times and times["iat"] > now + leeway:
        raise TokenRejected("issued in the future")


def _check_audience(audience: object, accepted: Sequence[str]) -> None:
    if audience is None:
        raise TokenRejected("missing aud")
    values = [audience] if isinstance(audience, str) else audience
    if not isinstance(values, list) or not values or not all(isinstance(value, str) for value in values):
        raise TokenRejected("malformed aud")
    if not any(value in accepted for value in values):
        raise TokenRejected("wrong audience")


_REASONS: tuple[tuple[type[jwt.PyJWTError], str], ...] = (
    (jwt.ExpiredSignatureError, "expired"),
    (jwt.ImmatureSignatureError, "not yet valid"),
    (jwt.InvalidIssuerError, "wrong issuer"),
    (jwt.InvalidAudienceError, "wrong audience"),
    (jwt.MissingRequiredClaimError, "missing required claim"),
    (jwt.InvalidAlgorithmError, "algorithm not allowed"),
    (jwt.InvalidKeyError, "key cannot verify this token"),
    (jwt.DecodeError, "malformed token"),
)


def _reason(exc: jwt.PyJWTError) -> str:
    for kind, reason in _REASONS:
        if isinstance(exc, kind):
            return reason
    return f"invalid token ({type(exc).__name__})"
