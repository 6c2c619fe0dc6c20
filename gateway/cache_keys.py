"""What makes two requests share a cached answer: pure functions, no I/O.

An entry is shared only within one scope: the caller's tenant (or, without a tenant, the caller
alone) as the verified token says, the policy version and the caller's roles (two role sets may
redact or guard differently). Nothing the client sends can choose the scope. Within it, the
request's canonical JSON (every field that can change the answer, the stream flag included)
picks the entry. The name of an entry is an HMAC of all of this under a server secret, so Redis
holds no readable tenant, prompt or model.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from gateway.auth import Principal
from gateway.policy.rbac import Decision

KEY_FORMAT = "warden-cache-v1"
# Fields that never change the answer: `user` is for the caller's own tracking; the prefix-cache
# salt is derived from the scope, which the key already holds.
_IGNORED = frozenset({"user", "cache_salt"})
# JSON numbers the API treats as floats: 0 and 0.0 must name the same entry.
_FLOATS = frozenset(
    {"temperature", "top_p", "presence_penalty", "frequency_penalty", "min_p", "repetition_penalty"}
)
_FRESH_DIRECTIVES = frozenset({"no-cache", "no-store"})


@dataclass(frozen=True, slots=True)
class CacheScope:
    """Who may share entries, taken from the authenticated principal and the policy decision."""

    issuer: str
    tenant: str | None
    subject: str
    roles: tuple[str, ...]
    policy_version: str

    @classmethod
    def of(cls, principal: Principal, decision: Decision) -> CacheScope:
        return cls(
            principal.issuer, decision.tenant, principal.subject, decision.roles, decision.policy_version
        )

    def identity(self) -> list[str]:
        if self.tenant:
            return ["tenant", self.issuer, self.tenant]
        return ["subject", self.issuer, self.subject]


def request_fields(request: BaseModel | Mapping[str, Any]) -> dict[str, Any]:
    """The request as plain JSON data. Give the validated request model: its defaults are filled in."""
    if isinstance(request, BaseModel):
        data: dict[str, Any] = request.model_dump(mode="json", exclude_none=True)
        return data
    return dict(request)


def canonical_request(request: BaseModel | Mapping[str, Any]) -> str:
    """Sorted keys, no spaces, floats normalised; fields that cannot change the answer dropped."""
    fields = {
        name: float(value) if name in _FLOATS and isinstance(value, int | float) else value
        for name, value in request_fields(request).items()
        if name not in _IGNORED and value is not None
    }
    return json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def is_deterministic(request: BaseModel | Mapping[str, Any]) -> bool:
    """Greedy (temperature 0) or seeded sampling: the same request gives the same answer."""
    fields = request_fields(request)
    temperature = fields.get("temperature")
    return fields.get("seed") is not None or (temperature is not None and float(temperature) == 0.0)


def wants_fresh(cache_control: str | None) -> bool:
    """The client sent `Cache-Control: no-cache` or `no-store`."""
    if not cache_control:
        return False
    names = (part.split("=", 1)[0].strip().lower() for part in cache_control.split(","))
    return any(name in _FRESH_DIRECTIVES for name in names)


def key_material(scope: CacheScope, endpoint: str, request: BaseModel | Mapping[str, Any]) -> bytes:
    """Everything the entry name depends on, framed unambiguously (a JSON array)."""
    fields = request_fields(request)
    parts = [
        KEY_FORMAT,
        *scope.identity(),
        scope.policy_version,
        sorted(scope.roles),
        endpoint,
        str(fields.get("model", "")),
        canonical_request(fields),
    ]
    return json.dumps(parts, separators=(",", ":"), ensure_ascii=False).encode()


def entry_name(secret: bytes, material: bytes) -> str:
    """HMAC-SHA256 of the key material under the server's secret, as hex."""
    return hmac.new(secret, material, hashlib.sha256).hexdigest()
