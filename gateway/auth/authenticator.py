"""``Authenticator``: from an ``Authorization`` header to a verified ``Principal``, or a 401.

The unverified ``iss`` only chooses which issuer's keys to try; the token is then verified
against that issuer's settings in full, so a forged ``iss`` gains nothing. Verified tokens are
cached by the SHA-256 of the token until their ``exp`` in a bounded LRU, so a repeated token
costs a hash, a dict lookup and a clock read.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from gateway.auth.jwt import TokenRejected, parse_unverified, verify_token
from gateway.auth.keys import JwksKeys, VerificationKey, load_static_keys
from gateway.auth.settings import AuthSettings, IssuerSettings
from gateway.errors import AuthenticationFailed

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Principal:
    """Who made the request, as vouched for by a verified token."""

    subject: str
    issuer: str
    claims: Mapping[str, Any]  # read-only view of the verified claims
    expires_at: float  # unix time


class _Issuer:
    """One trusted issuer: its settings, its configured keys and its JWKS, if any."""

    def __init__(self, settings: IssuerSettings, where: str) -> None:
        self.settings = settings
        self.where = where
        self.static: list[VerificationKey] = []
        self.jwks = JwksKeys(settings.jwks, f"{where}.jwks") if settings.jwks is not None else None

    async def start(self) -> None:
        self.static = load_static_keys(self.settings, self.where)
        if self.jwks is not None:
            await self.jwks.start()

    async def candidates(self, kid: str | None) -> Sequence[VerificationKey]:
        keys = [key for key in self.static if key.matches(kid)]
        # A kid that names a configured key needs no JWKS lookup (and must not trigger a refresh).
        if self.jwks is not None and not (kid is not None and any(key.kid == kid for key in keys)):
            keys.extend(await self.jwks.lookup(kid))
        return keys


class Authenticator:
    """Verifies bearer tokens from the configured issuers; anything else is refused."""

    def __init__(self, settings: AuthSettings) -> None:
        self._max_token_bytes = settings.max_token_bytes
        self._cache_size = settings.verified_cache_size
        self._cache: OrderedDict[bytes, Principal] = OrderedDict()
        self._issuers = {
            issuer.issuer: _Issuer(issuer, f"auth.issuers[{index}]")
            for index, issuer in enumerate(settings.issuers)
        }

    async def start(self) -> None:
        """Load key files (errors are fatal) and fetch JWKS URLs (failures are logged, retried later)."""
        for issuer in self._issuers.values():
            await issuer.start()

    async def aclose(self) -> None:
        for issuer in self._issuers.values():
            if issuer.jwks is not None:
                await issuer.jwks.aclose()

    async def authenticate(self, authorization: str | None) -> Principal:
        """The principal behind ``Authorization: Bearer <token>``; raises ``AuthenticationFailed``."""
        token = self._bearer_token(authorization)
        digest = hashlib.sha256(token.encode("ascii")).digest()
        cached = self._cache.get(digest)
        if cached is not None:
            if cached.expires_at > time.time():
                self._cache.move_to_end(digest)
                return cached
            del self._cache[digest]
        try:
            principal = await self._verify(token)
        except TokenRejected as exc:
            logger.debug("token rejected", extra={"reason": exc.reason})
            raise AuthenticationFailed() from None
        self._remember(digest, principal)
        return principal

    def _bearer_token(self, authorization: str | None) -> str:
        if authorization is None:
            logger.debug("token rejected", extra={"reason": "no authorization header"})
            raise AuthenticationFailed(code="missing_token")
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token:
            logger.debug("token rejected", extra={"reason": "not a bearer token"})
            raise AuthenticationFailed()
        # Checked before hashing or parsing, so an oversized header costs nothing more.
        if len(token) > self._max_token_bytes or not token.isascii():
            logger.debug("token rejected", extra={"reason": "token too large or not ASCII"})
            raise AuthenticationFailed()
        return token

    async def _verify(self, token: str) -> Principal:
        unverified = parse_unverified(token, self._max_token_bytes)
        claimed_issuer = unverified.payload.get("iss")
        issuer = self._issuers.get(claimed_issuer) if isinstance(claimed_issuer, str) else None
        if issuer is None:
            raise TokenRejected("issuer not configured")
        keys = await issuer.candidates(unverified.kid)
        claims = verify_token(token, unverified, keys, issuer.settings, time.time())
        return Principal(
            subject=claims["sub"],
            issuer=issuer.settings.issuer,
            claims=MappingProxyType(claims),
            # PyJWT compares whole seconds; the cache must not outlive what it would accept.
            expires_at=float(math.floor(claims["exp"])),
        )

    def _remember(self, digest: bytes, principal: Principal) -> None:
        if self._cache_size == 0 or principal.expires_at <= time.time():
            return
        self._cache[digest] = principal
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
