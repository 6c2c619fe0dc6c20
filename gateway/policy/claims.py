"""From verified claims to roles and tenant: claim paths, binding conditions, tenant extraction.

Claims come from a token the authenticator has verified; nothing here trusts anything else. Matching is
exact and type-aware: strings are case-sensitive, ``true`` never equals ``1``, and a claim of an
unexpected shape (a number where a list was expected, say) simply does not match.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gateway.policy.schema import Binding, ClaimValue, Condition, PolicyDocument

_MISSING: Any = object()


def resolve(claims: Mapping[str, Any], path: str) -> Any:
    """The claim at ``path``, or ``MISSING``: the whole name is tried first, then each dotted split."""
    if path in claims:
        return claims[path]
    start = 0
    while (dot := path.find(".", start)) != -1:
        head = claims.get(path[:dot], _MISSING)
        if isinstance(head, Mapping):
            found = resolve(head, path[dot + 1 :])
            if found is not _MISSING:
                return found
        start = dot + 1
    return _MISSING


def is_missing(value: Any) -> bool:
    return value is _MISSING


def _same(actual: Any, expected: ClaimValue) -> bool:
    if isinstance(expected, bool) or isinstance(actual, bool):
        return isinstance(actual, bool) and isinstance(expected, bool) and actual == expected
    if isinstance(expected, str):
        return isinstance(actual, str) and actual == expected
    return isinstance(actual, int) and actual == expected


def condition_holds(condition: Condition, claims: Mapping[str, Any]) -> bool:
    value = resolve(claims, condition.claim)
    if value is _MISSING:
        return False
    if condition.equals is not None:
        return _same(value, condition.equals)
    if condition.contains is not None:
        if isinstance(value, str):
            # OAuth scope strings are separated by single spaces (RFC 6749 section 3.3), nothing else.
            return condition.contains in value.split(" ")
        return isinstance(value, list) and any(_same(item, condition.contains) for item in value)
    options = condition.any_of or ()
    items = value if isinstance(value, list) else [value]
    return any(_same(item, option) for item in items for option in options)


def binding_matches(binding: Binding, claims: Mapping[str, Any]) -> bool:
    conditions = binding.when if isinstance(binding.when, tuple) else (binding.when,)
    return all(condition_holds(condition, claims) for condition in conditions)


def matching_bindings(document: PolicyDocument, claims: Mapping[str, Any]) -> list[Binding]:
    return [binding for binding in document.bindings if binding_matches(binding, claims)]


def roles_for(document: PolicyDocument, claims: Mapping[str, Any]) -> tuple[str, ...]:
    """The caller's roles in binding order, each once."""
    roles: dict[str, None] = {}
    for binding in matching_bindings(document, claims):
        roles.update(dict.fromkeys(binding.roles))
    return tuple(roles)


def tenant_of(document: PolicyDocument, claims: Mapping[str, Any]) -> str | None:
    """The tenant id, or None when the policy names no tenant claim or the claim is not a usable string."""
    if document.tenant is None:
        return None
    value = resolve(claims, document.tenant.claim)
    return value if isinstance(value, str) and value.strip() else None
