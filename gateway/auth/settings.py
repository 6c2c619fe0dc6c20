"""Settings for token verification: which issuers are trusted, with which keys and algorithms.

Everything that decides how a token is checked lives here, never in the token: the algorithm
allowlist sits next to each key, and a key that could be confused with another kind (an HMAC
secret that is really a public key) is refused when the settings load.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator

from gateway.config import StrictModel

Algorithm = Literal["RS256", "RS384", "PS256", "ES256", "ES384", "EdDSA", "HS256"]
HMAC_ALGORITHMS = frozenset({"HS256"})
# RFC 7518 3.2: an HMAC key must be at least as long as the hash output.
MIN_SECRET_BYTES = 32
# Claims every token must carry: the principal needs `sub`, and the verified-token cache needs `exp`.
ALWAYS_REQUIRED = ("sub", "exp")

_PUBLIC_KEY_MARKERS = (
    "-----BEGIN",
    "ssh-rsa",
    "ssh-ed25519",
    "ssh-dss",
    "ecdsa-sha2-",
    "sk-ssh-",
    "sk-ecdsa-",
)


class KeySettings(StrictModel):
    """One verification key: a public key PEM file, or an HMAC secret for HS256."""

    pem: Path | None = None
    kid: str | None = Field(default=None, min_length=1, max_length=256)
    algorithms: list[Algorithm] = Field(min_length=1)
    secret: SecretStr | None = None

    @model_validator(mode="after")
    def _one_kind_of_key(self) -> KeySettings:
        hmac_algs = HMAC_ALGORITHMS.intersection(self.algorithms)
        if (self.pem is None) == (self.secret is None):
            raise ValueError("give exactly one of 'pem' (public key file) or 'secret' (HS256 only)")
        if self.secret is not None:
            if set(self.algorithms) != hmac_algs:
                raise ValueError("a 'secret' key may only list HS256 in 'algorithms'")
            _check_secret(self.secret.get_secret_value())
        elif hmac_algs:
            raise ValueError("HS256 needs a 'secret'; a 'pem' key is only for RS*, PS256, ES* and EdDSA")
        return self


def _check_secret(secret: str) -> None:
    stripped = secret.strip()
    if stripped.startswith(_PUBLIC_KEY_MARKERS) or "PUBLIC KEY" in stripped or "PRIVATE KEY" in stripped:
        raise ValueError("'secret' looks like a PEM or SSH key; HS256 needs a random shared secret")
    if len(secret.encode("utf-8")) < MIN_SECRET_BYTES:
        raise ValueError(f"'secret' must be at least {MIN_SECRET_BYTES} bytes for HS256")


class JwksSettings(StrictModel):
    """A JSON Web Key Set from a file or an HTTPS URL; only asymmetric keys are used from it."""

    file: Path | None = None
    url: str | None = None
    algorithms: list[Algorithm] = Field(min_length=1)
    ca: Path | None = None  # a private CA to verify the JWKS server (default: the system store)
    timeout_s: float = Field(default=3.0, gt=0, le=60)
    cache_ttl_s: float = Field(default=300.0, gt=0, le=86_400)
    min_refresh_interval_s: float = Field(default=30.0, ge=0, le=3600)

    @field_validator("url")
    @classmethod
    def _https_only(cls, url: str | None) -> str | None:
        if url is not None and not url.startswith("https://"):
            raise ValueError("JWKS url must use https://")
        return url

    @field_validator("algorithms")
    @classmethod
    def _asymmetric_only(cls, algorithms: list[Algorithm]) -> list[Algorithm]:
        if HMAC_ALGORITHMS.intersection(algorithms):
            raise ValueError("a JWKS may only list asymmetric algorithms (RS*, PS256, ES*, EdDSA), never HS*")
        return algorithms

    @model_validator(mode="after")
    def _one_source(self) -> JwksSettings:
        if (self.file is None) == (self.url is None):
            raise ValueError("give exactly one of 'file' or 'url'")
        if self.ca is not None and self.url is None:
            raise ValueError("'ca' only applies to a JWKS 'url'")
        return self


class IssuerSettings(StrictModel):
    """A trusted token issuer: its exact `iss`, the audiences we accept, and its keys."""

    issuer: str = Field(min_length=1)
    audiences: list[str] = Field(min_length=1)
    keys: list[KeySettings] = Field(default_factory=list)
    jwks: JwksSettings | None = None
    required_claims: list[str] = Field(default_factory=lambda: ["sub", "exp", "iat"])
    leeway_s: float = Field(default=30.0, ge=0, le=300)

    @field_validator("audiences")
    @classmethod
    def _non_empty_audiences(cls, audiences: list[str]) -> list[str]:
        if any(not audience for audience in audiences):
            raise ValueError("audiences must be non-empty strings")
        return audiences

    @field_validator("required_claims")
    @classmethod
    def _always_required(cls, claims: list[str]) -> list[str]:
        missing = [claim for claim in ALWAYS_REQUIRED if claim not in claims]
        if missing:
            raise ValueError(f"must include {', '.join(ALWAYS_REQUIRED)} (missing: {', '.join(missing)})")
        return claims

    @model_validator(mode="after")
    def _some_key(self) -> IssuerSettings:
        if not self.keys and self.jwks is None:
            raise ValueError("an issuer needs 'keys', 'jwks' or both")
        return self


class AuthSettings(StrictModel):
    """Trusted issuers; with none, every request is refused (deny by default)."""

    issuers: list[IssuerSettings] = Field(default_factory=list)
    max_token_bytes: int = Field(default=8192, ge=256, le=65_536)
    verified_cache_size: int = Field(default=10_000, ge=0, le=1_000_000)

    @field_validator("issuers")
    @classmethod
    def _unique_issuers(cls, issuers: list[IssuerSettings]) -> list[IssuerSettings]:
        seen: set[str] = set()
        for issuer in issuers:
            if issuer.issuer in seen:
                raise ValueError(f"issuer {issuer.issuer!r} is listed twice")
            seen.add(issuer.issuer)
        return issuers
