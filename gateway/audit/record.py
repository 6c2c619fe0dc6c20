"""What one audit record says about one request, allowed or not, and how it is serialized.

A record is encrypted as a whole before it reaches the disk (see ``crypto``), so subjects and tenants
are never in clear either. Prompts and outputs go in per the policy's audit mode: ``omit`` (left out),
``hmac`` (HMAC-SHA256 under the gateway's audit key: proves that a known text was sent and reveals
nothing else) or ``encrypt`` (the text itself, readable by auditors only).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from gateway.policy.schema import Audit, AuditMode

if TYPE_CHECKING:
    from gateway.request_context import RequestContext

RECORD_VERSION = 1


def _mapping(value: object) -> dict[Any, Any]:
    if isinstance(value, Mapping):  # a read-only mapping in guard_scores or pii_counts
        return dict(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


_encode = json.JSONEncoder(
    separators=(",", ":"), ensure_ascii=False, allow_nan=False, default=_mapping
).encode


@dataclass(frozen=True, slots=True)
class AuditContent:
    """A prompt or an output as the policy allows it: a keyed hash or the text (encrypted with the record)."""

    mode: AuditMode  # "hmac" or "encrypt"; "omit" is represented by no content at all
    value: str  # the HMAC-SHA256 in hex, or the text

    def to_json(self) -> dict[str, str]:
        return {"hmac": self.value} if self.mode == "hmac" else {"text": self.value}


def keyed_hash(key: bytes, text: str) -> str:
    """HMAC-SHA256 of the UTF-8 text in hex; an auditor holding the key recomputes it for a known text."""
    return hmac.new(key, text.encode("utf-8"), hashlib.sha256).hexdigest()


def audit_content(mode: AuditMode, text: str | None, hmac_key: bytes) -> AuditContent | None:
    if text is None or mode == "omit":
        return None
    if mode == "hmac":
        return AuditContent("hmac", keyed_hash(hmac_key, text))
    return AuditContent("encrypt", text)


def canonical_text(value: Any) -> str:
    """The text that is hashed or kept for structured prompts (chat messages): sorted, compact JSON.

    Plain strings (the completions ``prompt``, an output) are used as they are.
    """
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, sort_keys=True, separators=(",", ":"))


@dataclass(frozen=True, slots=True)
class AuditRecord:
    time: float  # unix seconds, when the request finished
    request_id: str
    trace_id: str
    endpoint: str
    status: int  # the HTTP status the caller received
    latency_ms: float
    subject: str | None = None  # None when authentication failed or was not reached
    tenant: str | None = None
    roles: tuple[str, ...] = ()
    model: str | None = None
    worker: str | None = None
    policy_version: str | None = None
    decision: str | None = None  # e.g. "allowed", "no_role", "injection_blocked"; None: not reached
    rule: str | None = None  # the policy rule or guard rule behind the decision
    error_code: str | None = None  # the error code sent to the caller, if any
    guard_scores: Mapping[str, float] = field(default_factory=dict)  # e.g. {"injection": 0.91}
    guard_rules: tuple[str, ...] = ()  # ids of the guard rules that matched
    pii_counts: Mapping[str, int] = field(default_factory=dict)  # redactions by entity type
    cache_hit: bool = False
    tokens_in: int | None = None
    tokens_out: int | None = None
    prompt: AuditContent | None = None
    output: AuditContent | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "v": RECORD_VERSION,
            "time": self.time,
            "request_id": self.request_id,
            "trace_id": self.trace_id,
            "subject": self.subject,
            "tenant": self.tenant,
            "roles": self.roles,  # tuples and mappings serialize as they are: no copies
            "endpoint": self.endpoint,
            "model": self.model,
            "worker": self.worker,
            "policy_version": self.policy_version,
            "decision": self.decision,
            "rule": self.rule,
            "status": self.status,
            "error_code": self.error_code,
            "guard_scores": self.guard_scores,
            "guard_rules": self.guard_rules,
            "pii_counts": self.pii_counts,
            "cache_hit": self.cache_hit,
            "tokens_in": self.tokens_in,
            "tokens_out": self.tokens_out,
            "latency_ms": self.latency_ms,
            "prompt": self.prompt.to_json() if self.prompt else None,
            "output": self.output.to_json() if self.output else None,
        }


def encode_record(record: AuditRecord) -> bytes:
    """The plaintext that gets encrypted: compact UTF-8 JSON (raises ValueError for NaN or infinity)."""
    return _encode(record.to_json()).encode("utf-8")


def decode_record(plaintext: bytes) -> dict[str, Any]:
    data = json.loads(plaintext)
    if not isinstance(data, dict) or data.get("v") != RECORD_VERSION:
        raise ValueError("not an audit record of a known version")
    return data


def build_record(
    ctx: RequestContext,
    *,
    status: int,
    hmac_key: bytes,
    error_code: str | None = None,
    decision: str | None = None,
    rule: str | None = None,
    guard_scores: Mapping[str, float] | None = None,
    guard_rules: Sequence[str] = (),
    pii_counts: Mapping[str, int] | None = None,
    cache_hit: bool = False,
    tokens_in: int | None = None,
    tokens_out: int | None = None,
    prompt: str | None = None,
    output: str | None = None,
) -> AuditRecord:
    """A record from what the pipeline knows about the request.

    ``decision``/``rule`` override the authorization's (a guard that blocks names itself here).
    ``prompt``/``output`` are the texts (see ``canonical_text``); the caller's merged policy decides
    whether they are omitted, hashed or kept; before authorization the schema default (hmac) applies.
    """
    verdict = ctx.decision
    modes = verdict.settings.audit if verdict is not None and verdict.settings is not None else Audit()
    return AuditRecord(
        time=time.time(),
        request_id=ctx.request_id,
        trace_id=ctx.trace_id(),
        endpoint=ctx.endpoint,
        status=status,
        latency_ms=round((time.perf_counter() - ctx.started) * 1000.0, 3),
        subject=ctx.principal.subject if ctx.principal is not None else None,
        tenant=verdict.tenant if verdict is not None else None,
        roles=verdict.roles if verdict is not None else (),
        model=ctx.model,
        worker=ctx.worker,
        policy_version=verdict.policy_version if verdict is not None else None,
        decision=decision if decision is not None else (verdict.code if verdict is not None else None),
        rule=rule if rule is not None else (verdict.rule if verdict is not None else None),
        error_code=error_code,
        guard_scores=dict(guard_scores or {}),
        guard_rules=tuple(guard_rules),
        pii_counts=dict(pii_counts or {}),
        cache_hit=cache_hit,
        tokens_in=tokens_in,
        tokens_out=tokens_out,
        prompt=audit_content(modes.prompts, prompt, hmac_key),
        output=audit_content(modes.outputs, output, hmac_key),
    )
