"""Settings for the Redis connection (mounted as ``redis:``) and the response cache (``cache:``).

Secrets are ``SecretStr`` so they never show in a repr, a log line or a ``ConfigError``. Cache
secrets are strings of at least 32 characters (``openssl rand -base64 32``); keys are derived from
them with HKDF, so any high-entropy string works.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator, model_validator

from gateway.config import StrictModel

MIN_SECRET_CHARS = 32
_SCHEMES = ("redis", "rediss", "unix")


class RedisSettings(StrictModel):
    """How the gateway reaches Redis, and how it behaves while Redis is unreachable."""

    # A URL may carry a password (redis://user:pass@host), hence secret.
    url: SecretStr = SecretStr("redis://127.0.0.1:6379/0")
    # ACL user and password; they take precedence over credentials in the URL.
    username: SecretStr | None = None
    password: SecretStr | None = None
    # PEM CA bundle that verifies the server for rediss:// (default: the system store).
    ca: Path | None = None
    # Client certificate and key, for servers that require TLS client authentication.
    cert: Path | None = None
    key: Path | None = None
    check_hostname: bool = True
    connect_timeout_s: float = Field(default=0.5, gt=0, le=30)
    # Commands take well under a millisecond; a slow answer is treated as an outage.
    command_timeout_s: float = Field(default=0.25, gt=0, le=30)
    max_connections: int = Field(default=512, ge=1, le=100_000)
    # Every key the gateway writes starts with this (several deployments can share one Redis).
    key_prefix: str = Field(default="warden:", pattern=r"^[A-Za-z0-9_.:-]{1,64}$")
    # While Redis is down: probe again after this long, doubling up to the maximum.
    recovery_initial_s: float = Field(default=0.1, gt=0, le=60)
    recovery_max_s: float = Field(default=5.0, gt=0, le=600)
    # While Redis is down each replica enforces the limits on its own; with N replicas, 1/N keeps
    # the total near the configured limits (1.0 lets each replica admit a full share).
    outage_limit_fraction: float = Field(default=1.0, gt=0, le=1.0)

    @field_validator("url")
    @classmethod
    def _known_scheme(cls, url: SecretStr) -> SecretStr:
        parts = urlsplit(url.get_secret_value())
        if parts.scheme not in _SCHEMES:
            # The URL itself may hold a password: name the scheme only.
            raise ValueError(f"expected a redis://, rediss:// or unix:// URL (got scheme {parts.scheme!r})")
        if parts.query:
            # Query options (such as ssl_cert_reqs=none) would override these settings silently.
            raise ValueError("query options are not supported in the URL; use the redis settings keys")
        return url

    @model_validator(mode="after")
    def _consistent(self) -> RedisSettings:
        tls = urlsplit(self.url.get_secret_value()).scheme == "rediss"
        if not tls and (self.ca or self.cert or self.key):
            raise ValueError("ca, cert and key apply only to a rediss:// URL")
        if (self.cert is None) != (self.key is None):
            raise ValueError("cert and key must be given together")
        if self.username is not None and self.password is None:
            raise ValueError("an ACL username needs a password")
        if self.recovery_max_s < self.recovery_initial_s:
            raise ValueError("recovery_max_s must be at least recovery_initial_s")
        return self

    @property
    def tls(self) -> bool:
        return urlsplit(self.url.get_secret_value()).scheme == "rediss"


class CacheSettings(StrictModel):
    """Server-side secrets and single-flight timing of the response cache (what is cached is policy).

    ``key_secret`` keys the HMAC that names entries; changing it empties the cache in effect.
    ``encryption_keys`` seal the entries (AES-256-GCM), by version: new entries use
    ``current_key_version`` (default: the highest), older versions still open the entries written
    with them until those expire, so a key is rotated by adding a version, then removing the old
    one after the longest TTL. Give both or neither: without them every process draws random keys
    at start-up (fine for one development process; replicas then share no entries).
    """

    key_secret: SecretStr | None = None
    encryption_keys: dict[int, SecretStr] = Field(default_factory=dict)
    current_key_version: int | None = None
    # Identical requests wait this long for the first one's answer, then ask the worker themselves.
    single_flight_wait_s: float = Field(default=15.0, ge=0, le=600)
    # A crashed leader's claim on a key expires after this long.
    single_flight_lock_s: float = Field(default=120.0, gt=0, le=3600)

    @field_validator("encryption_keys")
    @classmethod
    def _versions(cls, keys: dict[int, SecretStr]) -> dict[int, SecretStr]:
        for version, secret in keys.items():
            if not 0 < version < 65536:
                raise ValueError(f"key version {version}: expected 1 to 65535")
            _check_secret(secret, f"encryption_keys.{version}")
        return keys

    @field_validator("key_secret")
    @classmethod
    def _long_secret(cls, secret: SecretStr | None) -> SecretStr | None:
        if secret is not None:
            _check_secret(secret, "key_secret")
        return secret

    @model_validator(mode="after")
    def _complete(self) -> CacheSettings:
        if (self.key_secret is None) != (not self.encryption_keys):
            raise ValueError("give key_secret and encryption_keys together (or neither, for development)")
        if self.current_key_version is not None and self.current_key_version not in self.encryption_keys:
            raise ValueError(f"current_key_version {self.current_key_version} is not in encryption_keys")
        return self

    @property
    def configured(self) -> bool:
        return self.key_secret is not None

    def write_version(self) -> int:
        if self.current_key_version is not None:
            return self.current_key_version
        return max(self.encryption_keys)


def _check_secret(secret: SecretStr, name: str) -> None:
    value = secret.get_secret_value()
    if len(value) < MIN_SECRET_CHARS:
        raise ValueError(f"{name}: expected at least {MIN_SECRET_CHARS} characters")
    if len(set(value)) < 8:
        raise ValueError(f"{name}: too few distinct characters to be a random secret")
