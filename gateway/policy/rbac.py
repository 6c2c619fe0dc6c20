"""Authorization: what the caller's roles allow for one request, and which rule decided it.

Deny by default: a caller matched by no binding holds no role and is denied (``no_role``); when the
policy names a required tenant claim, a token without it is denied first (``tenant_missing``).

A caller may hold several roles at once (one per matching binding, or several per binding):

* The request is allowed when at least one role allows both the endpoint and the model, and no role
  of the caller denies the model (``deny_models`` in any role wins over every allow).
* Limits come from the roles that allow the request and take the most generous value: the highest
  ``max_tokens``, ``temperature_max`` and ``n_max``, the lowest ``top_p_min``, streaming if any allows
  it, the highest budgets (unset means unlimited). A caller can do what any one of their roles can.
  Each limit is merged on its own, so two roles can combine into limits neither has alone.
* Security settings take the strictest value across all of the caller's roles, allowing or not: the
  strictest injection action (block > sanitize > flag) and lowest threshold, PII redaction if any
  role redacts (entities joined, lowest score thresholds, the least revealing operator: replace >
  mask > hash > encrypt, allow-list values only if every role allows them), ``fail_open`` only if
  every role has it, the most retentive audit mode (encrypt > hmac > omit). The cache is on only if
  every allowing role enables it, with the shortest TTL and smallest entry size, and
  ``allow_nondeterministic`` and ``client_no_cache`` only if all allow them. Tenant budgets merge
  like the caller's own (most generous of the allowing roles).

Pure functions over a loaded policy: no I/O, safe to call from any thread.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any, Literal, TypeVar

from gateway.policy.claims import roles_for, tenant_of
from gateway.policy.schema import (
    Audit,
    Budget,
    Cache,
    Guards,
    InjectionGuard,
    PiiGuard,
    PolicyDocument,
    Role,
    Sampling,
    TenantBudget,
)
from gateway.policy.store import LoadedPolicy

DecisionCode = Literal[
    "allowed",
    "no_role",
    "tenant_missing",
    "model_not_allowed",
    "endpoint_not_allowed",
    "max_tokens_exceeded",
    "sampling_not_allowed",
]

_ACTION_RANK = {"flag": 0, "sanitize": 1, "block": 2}
_AUDIT_RANK = {"omit": 0, "hmac": 1, "encrypt": 2}
# How little a redacted span reveals: a fixed text nothing, a mask its type, a hash which spans are
# equal, a ciphertext the value itself to whoever holds the key.
_OPERATOR_RANK = {"encrypt": 0, "hash": 1, "mask": 2, "replace": 3}

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class RequestFacts:
    endpoint: str  # "chat.completions" | "completions" | "models"
    model: str | None = None
    max_tokens: int | None = None  # as requested (None = not given)
    temperature: float | None = None
    top_p: float | None = None
    n: int = 1
    stream: bool = False


@dataclass(frozen=True, slots=True)
class EffectiveSettings:
    """The caller's roles merged into one set of settings for the later steps of the request."""

    sampling: Sampling
    guards: Guards
    cache: Cache
    budget: Budget
    audit: Audit


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    rule: str  # e.g. "roles.engineer.models[0]", "roles.contractor.deny_models[1]", "default-deny"
    reason: str  # one sentence for people; never contains claim values
    code: DecisionCode
    roles: tuple[str, ...]
    tenant: str | None
    policy_version: str
    max_tokens: int | None  # the effective cap when allowed
    settings: EffectiveSettings | None  # when allowed


def decide(policy: LoadedPolicy, claims: Mapping[str, Any], request: RequestFacts) -> Decision:
    doc = policy.document

    def deny(code: DecisionCode, rule: str, reason: str, roles: tuple[str, ...] = ()) -> Decision:
        return Decision(False, rule, reason, code, roles, tenant, policy.version, None, None)

    tenant = tenant_of(doc, claims)
    if tenant is None and doc.tenant is not None and doc.tenant.required:
        claim = doc.tenant.claim
        return deny("tenant_missing", "tenant.claim", f"the tenant claim '{claim}' is missing or empty")
    roles = roles_for(doc, claims)
    if not roles:
        return deny("no_role", "default-deny", "no binding matches the caller's claims, so no role applies")
    names = ", ".join(roles)
    endpoint = request.endpoint
    by_endpoint = [name for name in roles if endpoint in doc.roles[name].endpoints]
    if not by_endpoint:
        reason = f"none of the caller's roles ({names}) allows the {endpoint} endpoint"
        return deny("endpoint_not_allowed", f"roles.{roles[0]}.endpoints", reason, roles)

    model = request.model
    if model is None:
        if endpoint != "models":
            return deny("model_not_allowed", "default-deny", "the request names no model", roles)
        allowing = by_endpoint
        rule, reason = f"roles.{allowing[0]}.endpoints", f"role '{allowing[0]}' allows the models endpoint"
    else:
        denial = _denial(doc, roles, model)
        if denial is not None:
            name, index, pattern = denial
            reason = f"model '{model}' matches '{pattern}' in deny_models of role '{name}' (a deny wins)"
            return deny("model_not_allowed", f"roles.{name}.deny_models[{index}]", reason, roles)
        grants = [(name, index) for name in by_endpoint if (index := _grant(doc.roles[name], model)) >= 0]
        if not grants:
            reason = f"no role of the caller ({names}) allows model '{model}' on the {endpoint} endpoint"
            return deny("model_not_allowed", f"roles.{by_endpoint[0]}.models", reason, roles)
        allowing = [name for name, _ in grants]
        name, index = grants[0]
        pattern = doc.roles[name].models[index]
        rule, reason = f"roles.{name}.models[{index}]", f"role '{name}' allows '{model}' by '{pattern}'"

    granting = [(name, doc.roles[name]) for name in allowing]
    cap_role, cap = _pick([(name, role.max_tokens) for name, role in granting], _higher)
    if request.max_tokens is not None and request.max_tokens > cap:
        reason = f"max_tokens {request.max_tokens} is over the cap of {cap} (role '{cap_role}')"
        return deny("max_tokens_exceeded", f"roles.{cap_role}.max_tokens", reason, roles)
    sampling, problem = _check_sampling(granting, request)
    if problem is not None:
        return deny("sampling_not_allowed", problem[0], problem[1], roles)
    everyone = [doc.roles[name] for name in roles]
    allowed_roles = [role for _, role in granting]
    settings = EffectiveSettings(
        sampling=sampling,
        guards=_strictest_guards(everyone),
        cache=_strictest_cache(allowed_roles),
        budget=_most_generous_budget(allowed_roles),
        audit=Audit(
            prompts=max((r.audit.prompts for r in everyone), key=_AUDIT_RANK.__getitem__),
            outputs=max((r.audit.outputs for r in everyone), key=_AUDIT_RANK.__getitem__),
        ),
    )
    return Decision(True, rule, reason, "allowed", roles, tenant, policy.version, cap, settings)


def visible_models(policy: LoadedPolicy, claims: Mapping[str, Any], models: Iterable[str]) -> list[str]:
    """The models, in the given order, that one of the caller's roles allows and none denies.

    Endpoints do not narrow the list: a role that may only list models still sees the models it names.
    """
    doc = policy.document
    if doc.tenant is not None and doc.tenant.required and tenant_of(doc, claims) is None:
        return []
    roles = roles_for(doc, claims)
    return [
        model
        for model in models
        if _denial(doc, roles, model) is None and any(_grant(doc.roles[name], model) >= 0 for name in roles)
    ]


def _grant(role: Role, model: str) -> int:
    return next((index for index, glob in enumerate(role.models) if fnmatchcase(model, glob)), -1)


def _denial(doc: PolicyDocument, roles: Sequence[str], model: str) -> tuple[str, int, str] | None:
    for name in roles:
        for index, glob in enumerate(doc.roles[name].deny_models):
            if fnmatchcase(model, glob):
                return name, index, glob
    return None


def _pick(items: Sequence[tuple[str, T]], better: Callable[[T, T], bool]) -> tuple[str, T]:
    """The first item whose value no later item beats, with the role that set it."""
    best = items[0]
    for item in items[1:]:
        if better(item[1], best[1]):
            best = item
    return best


def _higher(a: Any, b: Any) -> bool:
    return bool(a > b)


def _higher_or_unlimited(a: float | None, b: float | None) -> bool:
    return b is not None and (a is None or a > b)


def _lower_or_unlimited(a: float | None, b: float | None) -> bool:
    return b is not None and (a is None or a < b)


def _check_sampling(
    granting: Sequence[tuple[str, Role]], request: RequestFacts
) -> tuple[Sampling, tuple[str, str] | None]:
    temp_role, temp_max = _pick([(n, r.sampling.temperature_max) for n, r in granting], _higher_or_unlimited)
    top_role, top_min = _pick([(n, r.sampling.top_p_min) for n, r in granting], _lower_or_unlimited)
    n_role, n_max = _pick([(n, r.sampling.n_max) for n, r in granting], _higher)
    stream_role, stream = _pick([(n, r.sampling.allow_stream) for n, r in granting], _higher)
    sampling = Sampling(temperature_max=temp_max, top_p_min=top_min, n_max=n_max, allow_stream=stream)
    base = "roles.{}.sampling.{}"
    if request.temperature is not None and temp_max is not None and request.temperature > temp_max:
        reason = f"temperature {request.temperature} is over the maximum of {temp_max} (role '{temp_role}')"
        return sampling, (base.format(temp_role, "temperature_max"), reason)
    if request.top_p is not None and top_min is not None and request.top_p < top_min:
        reason = f"top_p {request.top_p} is under the minimum of {top_min} (role '{top_role}')"
        return sampling, (base.format(top_role, "top_p_min"), reason)
    if request.n > n_max:
        reason = f"n {request.n} is over the maximum of {n_max} (role '{n_role}')"
        return sampling, (base.format(n_role, "n_max"), reason)
    if request.stream and not stream:
        names = ", ".join(name for name, _ in granting)
        reason = f"streaming is not allowed for the roles that allow this request ({names})"
        return sampling, (base.format(stream_role, "allow_stream"), reason)
    return sampling, None


def _strictest_guards(roles: Sequence[Role]) -> Guards:
    return Guards(
        injection=InjectionGuard(
            action=max((r.guards.injection.action for r in roles), key=_ACTION_RANK.__getitem__),
            threshold=min(r.guards.injection.threshold for r in roles),
        ),
        pii=_strictest_pii([r.guards.pii for r in roles]),
        fail_open=all(r.guards.fail_open for r in roles),
    )


def _strictest_pii(guards: Sequence[PiiGuard]) -> PiiGuard:
    """Redact if any role does, every entity any role names, the least revealing operator, the
    lowest thresholds, and only the allow-list values every role allows."""
    operator = max((g.operator for g in guards), key=_OPERATOR_RANK.__getitem__)
    entities = tuple(dict.fromkeys(e for g in guards for e in g.entities))
    typed = dict.fromkeys(e for g in guards for e in g.thresholds)
    allowed = {v.casefold() for v in guards[0].allow_list}
    for guard in guards[1:]:
        allowed &= {v.casefold() for v in guard.allow_list}
    return PiiGuard(
        redact_input=any(g.redact_input for g in guards),
        redact_output=any(g.redact_output for g in guards),
        entities=entities,
        operator=operator,
        replacement=next(g.replacement for g in guards if g.operator == operator),
        score_threshold=min(g.score_threshold for g in guards),
        thresholds={e: min(g.thresholds.get(e, g.score_threshold) for g in guards) for e in typed},
        allow_list=tuple(dict.fromkeys(v for v in guards[0].allow_list if v.casefold() in allowed)),
    )


def _strictest_cache(roles: Sequence[Role]) -> Cache:
    return Cache(
        enabled=all(r.cache.enabled for r in roles),
        ttl_s=min(r.cache.ttl_s for r in roles),
        max_entry_bytes=min(r.cache.max_entry_bytes for r in roles),
        allow_nondeterministic=all(r.cache.allow_nondeterministic for r in roles),
        client_no_cache=all(r.cache.client_no_cache for r in roles),
    )


def _most_generous_budget(roles: Sequence[Role]) -> Budget:
    def most(values: list[int | None]) -> int | None:
        return None if None in values else max(v for v in values if v is not None)

    return Budget(
        requests_per_minute=most([r.budget.requests_per_minute for r in roles]),
        tokens_per_minute=most([r.budget.tokens_per_minute for r in roles]),
        tokens_per_day=most([r.budget.tokens_per_day for r in roles]),
        tenant=TenantBudget(
            requests_per_minute=most([r.budget.tenant.requests_per_minute for r in roles]),
            tokens_per_minute=most([r.budget.tenant.tokens_per_minute for r in roles]),
            tokens_per_day=most([r.budget.tenant.tokens_per_day for r in roles]),
        ),
    )
