"""A test identity provider: an ES256 key pair on disk and tokens signed with it."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

ISSUER = "https://idp.test.example"
AUDIENCE = "warden"


class TestIssuer:
    __test__ = False  # not a pytest class

    def __init__(self, directory: Path, issuer: str = ISSUER, audience: str = AUDIENCE) -> None:
        self.issuer = issuer
        self.audience = audience
        self.private_key = ec.generate_private_key(ec.SECP256R1())
        directory.mkdir(parents=True, exist_ok=True)
        self.public_pem = directory / "jwt-public.pem"
        self.public_pem.write_bytes(
            self.private_key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )

    def settings(self) -> dict[str, Any]:
        """The gateway's ``auth.issuers`` entry that trusts this issuer."""
        return {
            "issuer": self.issuer,
            "audiences": [self.audience],
            "keys": [{"pem": str(self.public_pem), "algorithms": ["ES256"]}],
        }

    def mint(self, sub: str = "alice", ttl_s: int = 600, **claims: Any) -> str:
        now = int(time.time())
        payload = {
            "iss": self.issuer,
            "aud": self.audience,
            "sub": sub,
            "iat": now,
            "exp": now + ttl_s,
            **claims,
        }
        return jwt.encode(payload, self.private_key, algorithm="ES256")
