"""Verification keys: public key PEM files, HS256 secrets, and JWKS from a file or an HTTPS URL.

Each key carries the algorithms it may verify, fixed by configuration and by the key's own type
(an EC P-256 key verifies ES256 and nothing else), so a token can never pick how it is checked.
A JWKS is cached for ``cache_ttl_s``; a token whose ``kid`` is unknown triggers one refresh, and
refreshes on demand are spaced by ``min_refresh_interval_s`` so random kids cannot hammer the
issuer. A failed refresh keeps the keys we had.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx
import jwt
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from gateway.auth.settings import IssuerSettings, JwksSettings, KeySettings
from gateway.config import ConfigError
from gateway.tls import TlsFiles, client_context

logger = logging.getLogger(__name__)

PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey
MIN_RSA_BITS = 2048
MAX_JWKS_BYTES = 1_048_576
_KEY_FILE_MAX_BYTES = 65_536
_EC_ALGORITHMS = {"secp256r1": frozenset({"ES256"}), "secp384r1": frozenset({"ES384"})}


@dataclass(frozen=True, slots=True)
class VerificationKey:
    key: PublicKey | bytes  # a public key, or the HS256 secret
    algorithms: frozenset[str]
    kid: str | None

    def matches(self, kid: str | None) -> bool:
        """A key without a kid is a candidate for any token; otherwise the kids must be equal."""
        return kid is None or self.kid is None or self.kid == kid


def algorithms_for(key: object) -> frozenset[str]:
    """The algorithms a public key can verify, by its type and size."""
    if isinstance(key, rsa.RSAPublicKey):
        return frozenset({"RS256", "RS384", "PS256"}) if key.key_size >= MIN_RSA_BITS else frozenset()
    if isinstance(key, ec.EllipticCurvePublicKey):
        return _EC_ALGORITHMS.get(key.curve.name, frozenset())
    if isinstance(key, ed25519.Ed25519PublicKey):
        return frozenset({"EdDSA"})
    return frozenset()


def load_static_keys(issuer: IssuerSettings, where: str) -> list[VerificationKey]:
    """The issuer's configured keys; ``where`` names the settings entry in errors."""
    return [_load_key(key, f"{where}.keys[{index}]") for index, key in enumerate(issuer.keys)]


def _load_key(settings: KeySettings, where: str) -> VerificationKey:
    if settings.secret is not None:
        secret = settings.secret.get_secret_value().encode("utf-8")
        return VerificationKey(secret, frozenset(settings.algorithms), settings.kid)
    if settings.pem is None:  # excluded by KeySettings; kept for the type checker
        raise ConfigError(f"{where}: needs 'pem' or 'secret'")
    public = load_public_pem(settings.pem, where)
    usable = algorithms_for(public)
    wrong = sorted(set(settings.algorithms) - usable)
    if wrong:
        raise ConfigError(
            f"{where}.algorithms: {settings.pem} holds a key that cannot verify {', '.join(wrong)} "
            f"(it can verify: {', '.join(sorted(usable)) or 'nothing; RSA keys need >= 2048 bits'})"
        )
    return VerificationKey(public, frozenset(settings.algorithms), settings.kid)


def load_public_pem(path: Path, where: str) -> PublicKey:
    """A public key from a PEM public key or certificate file; private keys are refused."""
    try:
        with path.open("rb") as handle:
            data = handle.read(_KEY_FILE_MAX_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"{where}.pem: cannot read {path} ({exc.strerror})") from None
    if len(data) > _KEY_FILE_MAX_BYTES:
        raise ConfigError(f"{where}.pem: {path} is too large for a key file")
    if b"PRIVATE KEY" in data:
        raise ConfigError(f"{where}.pem: {path} holds a private key; configure the public key only")
    key: object
    try:
        if b"BEGIN CERTIFICATE" in data:
            key = x509.load_pem_x509_certificate(data).public_key()
        else:
            key = serialization.load_pem_public_key(data)
    except ValueError:
        raise ConfigError(f"{where}.pem: {path} is not a PEM public key or certificate") from None
    if not isinstance(key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey):
        raise ConfigError(f"{where}.pem: {path} holds an unsupported key type (expected RSA, EC or Ed25519)")
    return key


class JwksError(Exception):
    """The JWKS could not be read or parsed; the message holds no key material."""


def parse_jwks(data: bytes, allowed: frozenset[str]) -> list[VerificationKey]:
    """Usable verification keys from a JWKS document; symmetric, private and unusable keys are skipped."""
    try:
        document = json.loads(data)
    except (ValueError, RecursionError):
        raise JwksError("not valid JSON") from None
    entries = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(entries, list):
        raise JwksError("expected an object with a 'keys' list")
    keys: list[VerificationKey] = []
    for entry in entries:
        key = _parse_jwk(entry, allowed)
        if key is not None:
            keys.append(key)
    if len(keys) < len(entries):
        # Not an error: a JWKS may also publish encryption keys or algorithms we do not allow.
        logger.info("jwks keys skipped", extra={"skipped": len(entries) - len(keys), "usable": len(keys)})
    if not keys:
        logger.warning("jwks has no usable keys", extra={"allowed": sorted(allowed)})
    return keys


def _parse_jwk(entry: object, allowed: frozenset[str]) -> VerificationKey | None:
    if not isinstance(entry, dict) or entry.get("kty") not in ("RSA", "EC", "OKP"):
        return None  # "oct" (a shared secret) never comes from a JWKS
    if entry.get("use", "sig") != "sig" or "d" in entry:
        return None  # encryption keys, and private keys published by mistake
    kid, alg = entry.get("kid"), entry.get("alg")
    if (kid is not None and not isinstance(kid, str)) or (alg is not None and alg not in allowed):
        return None
    try:
        public = jwt.PyJWK(entry).key
    except (jwt.PyJWTError, ValueError, TypeError, KeyError, AttributeError):
        return None
    algorithms = algorithms_for(public) & allowed
    if alg is not None:
        algorithms &= {alg}
    if not algorithms:
        return None
    return VerificationKey(public, algorithms, kid)


class JwksKeys:
    """One issuer's JWKS, loaded at start and refreshed when stale or when a kid is unknown."""

    def __init__(
        self,
        settings: JwksSettings,
        where: str,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._settings = settings
        self._where = where
        self._allowed = frozenset(settings.algorithms)
        self._clock = clock
        self._keys: list[VerificationKey] | None = None
        self._kids: frozenset[str] = frozenset()
        self._fetched_at = 0.0
        # The load at start does not count: the first unknown kid after start may still refresh.
        self._last_attempt = -float("inf")
        self._lock = asyncio.Lock()
        self._client: httpx.AsyncClient | None = None

    async def start(self) -> None:
        """Read the file (errors are fatal) or fetch the URL (errors are logged; retried on demand)."""
        if self._settings.url is not None:
            context = client_context(TlsFiles(ca=self._settings.ca))
            self._client = httpx.AsyncClient(
                verify=context,
                timeout=httpx.Timeout(self._settings.timeout_s),
                follow_redirects=False,
                trust_env=False,
            )
        try:
            self._install(await self._fetch())
        except JwksError as exc:
            if self._settings.file is not None:
                raise ConfigError(f"{self._where}.file: {self._settings.file}: {exc}") from None
            logger.warning("jwks fetch failed", extra={"jwks": self._where, "error": str(exc)})

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def lookup(self, kid: str | None) -> Sequence[VerificationKey]:
        """Keys that may have signed a token with this ``kid``, refreshing first if needed."""
        if self._needs_refresh(kid):
            await self._refresh(kid)
        return [key for key in self._keys or () if key.matches(kid)]

    def _needs_refresh(self, kid: str | None) -> bool:
        stale = self._keys is None or self._clock() - self._fetched_at >= self._settings.cache_ttl_s
        return stale or (kid is not None and kid not in self._kids)

    async def _refresh(self, kid: str | None) -> None:
        async with self._lock:
            # Whoever waited on the lock may find its kid fetched, or the attempt too recent.
            if not self._needs_refresh(kid):
                return
            if self._clock() - self._last_attempt < self._settings.min_refresh_interval_s:
                return
            self._last_attempt = self._clock()
            try:
                self._install(await self._fetch())
            except JwksError as exc:
                logger.warning("jwks refresh failed", extra={"jwks": self._where, "error": str(exc)})

    def _install(self, keys: list[VerificationKey]) -> None:
        self._keys = keys
        self._kids = frozenset(key.kid for key in keys if key.kid is not None)
        self._fetched_at = self._clock()

    async def _fetch(self) -> list[VerificationKey]:
        if self._settings.file is not None:
            try:
                data = await asyncio.to_thread(self._settings.file.read_bytes)
            except OSError as exc:
                raise JwksError(f"cannot read ({exc.strerror})") from None
            if len(data) > MAX_JWKS_BYTES:
                raise JwksError("larger than 1 MiB")
            return parse_jwks(data, self._allowed)
        return parse_jwks(await self._download(), self._allowed)

    async def _download(self) -> bytes:
        if self._client is None or self._settings.url is None:
            raise JwksError("not started")
        body = bytearray()
        try:
            async with self._client.stream(
                "GET", self._settings.url, headers={"Accept": "application/json"}
            ) as response:
                if response.status_code != 200:
                    raise JwksError(f"HTTP status {response.status_code}")
                async for chunk in response.aiter_bytes():
                    body += chunk
                    if len(body) > MAX_JWKS_BYTES:
                        raise JwksError("larger than 1 MiB")
        except httpx.HTTPError as exc:
            raise JwksError(f"request failed ({type(exc).__name__})") from None
        return bytes(body)
