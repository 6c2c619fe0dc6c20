"""RBAC decisions as tables: who may do what, which rule decided, and how several roles combine."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from gateway.policy.rbac import Decision, RequestFacts, decide, visible_models
from gateway.policy.store import LoadedPolicy, load_policy_dir

POLICY = """
version: 1
tenant: {claim: org, required: true}
bindings:
  - {name: eng, when: {claim: groups, contains: eng}, roles: [engineer]}
  - {name: analysts, when: {claim: realm_access.roles, contains: analyst}, roles: [analyst]}
  - {name: contractors, when: {claim: groups, contains: contractors}, roles: [contractor]}
  - {name: batch, when: {claim: scope, contains: "warden:batch"}, roles: [batch]}
  - name: admins
    when:
      - {claim: iss, equals: "https://idp.example"}
      - {claim: groups, contains: admins}
    roles: [admin]
  - {name: tiers, when: {claim: tier, any_of: [gold, 3]}, roles: [viewer]}
  - {name: verified, when: {claim: email_verified, equals: true}, roles: [viewer]}
  - {name: namespaced, when: {claim: "https://acme.example/groups", contains: eng}, roles: [engineer]}
roles:
  engineer:
    models: ["llama-*", "qwen-[0-9]*", "exact-model"]
    max_tokens: 4096
    sampling: {temperature_max: 1.5, n_max: 4}
    guards:
      injection: {action: flag, threshold: 0.9}
      pii:
        redact_input: false
        redact_output: false
        entities: [EMAIL_ADDRESS]
        operator: hash
        score_threshold: 0.7
        thresholds: {PHONE_NUMBER: 0.3}
        allow_list: [help@acme.example, ops@acme.example]
      fail_open: true
    cache: {enabled: true, ttl_s: 600, allow_nondeterministic: true}
    budget: {requests_per_minute: 100, tokens_per_minute: 1000, tenant: {tokens_per_day: 9000}}
    audit: {prompts: omit, outputs: hmac}
  analyst:
    models: ["llama-8b", "mistral-?b"]
    endpoints: [chat.completions, models]
    max_tokens: 1024
    sampling: {temperature_max: 1.0, top_p_min: 0.5, allow_stream: false}
    guards:
      injection: {action: sanitize, threshold: 0.4}
      pii:
        redact_input: true
        redact_output: false
        entities: [PHONE_NUMBER]
        operator: encrypt
        thresholds: {EMAIL_ADDRESS: 0.9}
        allow_list: [HELP@acme.example]
      fail_open: true
    cache: {enabled: false, ttl_s: 60, client_no_cache: false}
    budget:
      requests_per_minute: 10
      tokens_per_minute: 5000
      tokens_per_day: 100
      tenant: {requests_per_minute: 50, tokens_per_day: 20000}
    audit: {prompts: encrypt, outputs: omit}
  contractor:
    models: ["llama-8b"]
    deny_models: ["*-preview", "llama-70b"]
    endpoints: [chat.completions]
    max_tokens: 256
    sampling: {allow_stream: false}
  batch:
    models: ["llama-8b"]
    endpoints: [completions]
    max_tokens: 512
  admin:
    models: ["*"]
    max_tokens: 8192
  viewer:
    endpoints: [models]
    max_tokens: 1
"""

ORG = "acme-secret-org"
ENG: dict[str, Any] = {"org": ORG, "groups": ["eng"]}
ANALYST: dict[str, Any] = {"org": ORG, "realm_access": {"roles": ["analyst"]}}
CONTRACTOR: dict[str, Any] = {"org": ORG, "groups": ["contractors"]}
ENG_ANALYST: dict[str, Any] = {**ENG, **ANALYST}
ENG_CONTRACTOR: dict[str, Any] = {"org": ORG, "groups": ["eng", "contractors"]}
CHAT = "chat.completions"


@pytest.fixture(scope="module")
def policy(tmp_path_factory: pytest.TempPathFactory) -> LoadedPolicy:
    directory = tmp_path_factory.mktemp("rbac")
    (directory / "policy.yaml").write_text(POLICY)
    return load_policy_dir(directory)


def facts(model: str | None = "llama-8b", endpoint: str = CHAT, **kwargs: Any) -> RequestFacts:
    return RequestFacts(endpoint=endpoint, model=model, **kwargs)


@pytest.mark.parametrize(
    ("claims", "request_facts", "rule", "roles", "max_tokens"),
    [
        (ENG, facts(), "roles.engineer.models[0]", ("engineer",), 4096),
        (ENG, facts("qwen-2"), "roles.engineer.models[1]", ("engineer",), 4096),
        (ENG, facts("exact-model"), "roles.engineer.models[2]", ("engineer",), 4096),
        (ENG, facts("llama-org/with-slash"), "roles.engineer.models[0]", ("engineer",), 4096),
        (ENG, facts(max_tokens=4096), "roles.engineer.models[0]", ("engineer",), 4096),
        (ENG, facts(temperature=1.5, n=4, stream=True), "roles.engineer.models[0]", ("engineer",), 4096),
        (ANALYST, facts(), "roles.analyst.models[0]", ("analyst",), 1024),
        (ANALYST, facts("mistral-7b"), "roles.analyst.models[1]", ("analyst",), 1024),
        (ANALYST, facts(top_p=0.5, temperature=1.0), "roles.analyst.models[0]", ("analyst",), 1024),
        (
            {"org": ORG, "scope": "openid warden:batch profile"},
            facts(endpoint="completions"),
            "roles.batch.models[0]",
            ("batch",),
            512,
        ),
        (
            {"org": ORG, "iss": "https://idp.example", "groups": ["admins"]},
            facts("anything-preview"),
            "roles.admin.models[0]",
            ("admin",),
            8192,
        ),
        (
            {"org": ORG, "https://acme.example/groups": ["eng"]},
            facts(),
            "roles.engineer.models[0]",
            ("engineer",),
            4096,
        ),
        ({"org": ORG, "tier": "gold"}, facts(None, "models"), "roles.viewer.endpoints", ("viewer",), 1),
        ({"org": ORG, "tier": 3}, facts(None, "models"), "roles.viewer.endpoints", ("viewer",), 1),
        (
            {"org": ORG, "tier": ["x", "gold"]},
            facts(None, "models"),
            "roles.viewer.endpoints",
            ("viewer",),
            1,
        ),
        (
            {"org": ORG, "email_verified": True, "tier": "gold"},
            facts(None, "models"),
            "roles.viewer.endpoints",
            ("viewer",),  # two bindings grant the same role: it is held once
            1,
        ),
        ({"org": ORG, "groups": "eng"}, facts(), "roles.engineer.models[0]", ("engineer",), 4096),
        (
            {"org": ORG, "realm_access.roles": ["analyst"]},
            facts(),
            "roles.analyst.models[0]",
            ("analyst",),
            1024,
        ),
    ],
)
def test_allowed(
    policy: LoadedPolicy,
    claims: dict[str, Any],
    request_facts: RequestFacts,
    rule: str,
    roles: tuple[str, ...],
    max_tokens: int,
) -> None:
    decision = decide(policy, claims, request_facts)
    assert (decision.allowed, decision.code, decision.rule) == (True, "allowed", rule)
    assert decision.roles == roles
    assert decision.max_tokens == max_tokens
    assert decision.tenant == ORG
    assert decision.policy_version == policy.version
    assert decision.settings is not None
    assert ORG not in decision.reason


@pytest.mark.parametrize(
    ("claims", "request_facts", "code", "rule"),
    [
        ({"groups": ["eng"]}, facts(), "tenant_missing", "tenant.claim"),
        ({"org": "", "groups": ["eng"]}, facts(), "tenant_missing", "tenant.claim"),
        ({"org": 42, "groups": ["eng"]}, facts(), "tenant_missing", "tenant.claim"),
        ({"org": ["acme"], "groups": ["eng"]}, facts(), "tenant_missing", "tenant.claim"),
        ({"org": ORG}, facts(), "no_role", "default-deny"),
        ({"org": ORG, "groups": ["ENG"]}, facts(), "no_role", "default-deny"),
        ({"org": ORG, "groups": ["engineering"]}, facts(), "no_role", "default-deny"),
        ({"org": ORG, "groups": {"eng": True}}, facts(), "no_role", "default-deny"),
        ({"org": ORG, "groups": ["admins"]}, facts(), "no_role", "default-deny"),
        (
            {"org": ORG, "iss": "https://evil.example", "groups": ["admins"]},
            facts(),
            "no_role",
            "default-deny",
        ),
        ({"org": ORG, "email_verified": "true"}, facts(None, "models"), "no_role", "default-deny"),
        ({"org": ORG, "email_verified": 1}, facts(None, "models"), "no_role", "default-deny"),
        ({"org": ORG, "tier": "3"}, facts(None, "models"), "no_role", "default-deny"),
        ({"org": ORG, "tier": "Gold"}, facts(None, "models"), "no_role", "default-deny"),
        ({"org": ORG, "scope": "warden:batchx"}, facts(endpoint="completions"), "no_role", "default-deny"),
        ({"org": ORG, "scope": "a\twarden:batch"}, facts(endpoint="completions"), "no_role", "default-deny"),
        ({"org": ORG, "realm_access": ["analyst"]}, facts(), "no_role", "default-deny"),
        ({"org": ORG, "realm_access.roles": "x"}, facts(), "no_role", "default-deny"),
        (ANALYST, facts(endpoint="completions"), "endpoint_not_allowed", "roles.analyst.endpoints"),
        ({"org": ORG, "tier": "gold"}, facts(), "endpoint_not_allowed", "roles.viewer.endpoints"),
        (CONTRACTOR, facts("llama-70b"), "model_not_allowed", "roles.contractor.deny_models[1]"),
        (ENG_CONTRACTOR, facts("llama-70b"), "model_not_allowed", "roles.contractor.deny_models[1]"),
        (ENG_CONTRACTOR, facts("llama-3-preview"), "model_not_allowed", "roles.contractor.deny_models[0]"),
        (ENG, facts("Llama-8b"), "model_not_allowed", "roles.engineer.models"),
        (ENG, facts("my-llama-8b"), "model_not_allowed", "roles.engineer.models"),
        (ENG, facts("qwen-x"), "model_not_allowed", "roles.engineer.models"),
        (ENG, facts("exact-model-2"), "model_not_allowed", "roles.engineer.models"),
        (ANALYST, facts("mistral-70b"), "model_not_allowed", "roles.analyst.models"),
        (
            {"org": ORG, "tier": "gold"},
            facts("llama-8b", "models"),
            "model_not_allowed",
            "roles.viewer.models",
        ),
        (ENG, facts(None), "model_not_allowed", "default-deny"),
        (ENG, facts(max_tokens=4097), "max_tokens_exceeded", "roles.engineer.max_tokens"),
        (CONTRACTOR, facts(max_tokens=257), "max_tokens_exceeded", "roles.contractor.max_tokens"),
        (ENG, facts(temperature=1.51), "sampling_not_allowed", "roles.engineer.sampling.temperature_max"),
        (ANALYST, facts(top_p=0.49), "sampling_not_allowed", "roles.analyst.sampling.top_p_min"),
        (ENG, facts(n=5), "sampling_not_allowed", "roles.engineer.sampling.n_max"),
        (CONTRACTOR, facts(n=2), "sampling_not_allowed", "roles.contractor.sampling.n_max"),
        (ANALYST, facts(stream=True), "sampling_not_allowed", "roles.analyst.sampling.allow_stream"),
        (CONTRACTOR, facts(stream=True), "sampling_not_allowed", "roles.contractor.sampling.allow_stream"),
    ],
)
def test_denied(
    policy: LoadedPolicy, claims: dict[str, Any], request_facts: RequestFacts, code: str, rule: str
) -> None:
    decision = decide(policy, claims, request_facts)
    assert (decision.allowed, decision.code, decision.rule) == (False, code, rule)
    assert decision.max_tokens is None
    assert decision.settings is None
    assert decision.policy_version == policy.version
    assert ORG not in decision.reason


def settings_of(decision: Decision) -> dict[str, Any]:
    assert decision.allowed, decision.reason
    assert decision.settings is not None
    s = decision.settings
    return {
        "sampling": s.sampling.model_dump(),
        "guards": s.guards.model_dump(),
        "cache": s.cache.model_dump(),
        "budget": s.budget.model_dump(),
        "audit": s.audit.model_dump(),
    }


def test_two_allowing_roles_take_generous_limits_and_strict_security(policy: LoadedPolicy) -> None:
    decision = decide(policy, ENG_ANALYST, facts(stream=True, temperature=1.2))
    assert decision.roles == ("engineer", "analyst")
    assert decision.rule == "roles.engineer.models[0]"  # the first role in binding order
    assert decision.max_tokens == 4096
    assert settings_of(decision) == {
        "sampling": {"temperature_max": 1.5, "top_p_min": None, "n_max": 4, "allow_stream": True},
        "guards": {
            "injection": {"action": "sanitize", "threshold": 0.4},
            "pii": {
                "redact_input": True,
                "redact_output": False,
                "entities": ("EMAIL_ADDRESS", "PHONE_NUMBER"),
                "operator": "hash",  # reveals less than encrypt
                "replacement": "[REDACTED]",
                "score_threshold": 0.5,  # the lower of 0.7 and the default
                # Per type, the lowest of each role's own value for it (or its score_threshold).
                "thresholds": {"PHONE_NUMBER": 0.3, "EMAIL_ADDRESS": 0.7},
                "allow_list": ("help@acme.example",),  # allowed by both roles, ignoring case
            },
            "fail_open": True,
        },
        "cache": {
            "enabled": False,
            "ttl_s": 60,
            "max_entry_bytes": 262144,
            "allow_nondeterministic": False,
            "client_no_cache": False,
        },
        "budget": {
            "requests_per_minute": 100,
            "tokens_per_minute": 5000,
            "tokens_per_day": None,
            # Each tenant limit merges on its own; the engineer sets no tenant rate, so none applies.
            "tenant": {"requests_per_minute": None, "tokens_per_minute": None, "tokens_per_day": 20000},
        },
        "audit": {"prompts": "encrypt", "outputs": "hmac"},
    }


def test_security_settings_count_roles_that_do_not_allow_the_request(policy: LoadedPolicy) -> None:
    # The analyst role does not allow completions: limits and cache come from the engineer alone,
    # guards and audit still from both.
    settings = settings_of(decide(policy, ENG_ANALYST, facts(endpoint="completions")))
    assert settings["sampling"]["top_p_min"] is None
    assert settings["cache"] == {
        "enabled": True,
        "ttl_s": 600,
        "max_entry_bytes": 262144,
        "allow_nondeterministic": True,
        "client_no_cache": True,
    }
    assert settings["budget"]["tokens_per_day"] is None
    assert settings["budget"]["tenant"]["tokens_per_day"] == 9000
    assert settings["guards"]["injection"] == {"action": "sanitize", "threshold": 0.4}
    assert settings["guards"]["pii"]["redact_input"] is True
    assert settings["audit"]["prompts"] == "encrypt"


def test_fail_open_needs_every_role_and_defaults_stay_strict(policy: LoadedPolicy) -> None:
    settings = settings_of(decide(policy, ENG_CONTRACTOR, facts(stream=True, max_tokens=4000)))
    assert settings["guards"]["fail_open"] is False  # contractor keeps the default
    assert settings["guards"]["injection"]["action"] == "block"
    assert settings["guards"]["pii"]["redact_output"] is True
    # The contractor's defaults: masking beats hashing, and an empty allow-list allows nothing.
    assert settings["guards"]["pii"]["operator"] == "mask"
    assert settings["guards"]["pii"]["allow_list"] == ()
    assert settings["guards"]["pii"]["thresholds"] == {"PHONE_NUMBER": 0.3}
    assert settings["guards"]["pii"]["score_threshold"] == 0.5
    assert settings["cache"]["enabled"] is False
    assert settings["audit"] == {"prompts": "hmac", "outputs": "hmac"}


@pytest.mark.parametrize(
    ("claims", "expected"),
    [
        (ENG, ["llama-8b", "llama-70b", "llama-3-preview", "qwen-2"]),
        (ENG_CONTRACTOR, ["llama-8b", "qwen-2"]),
        (ANALYST, ["llama-8b", "mistral-7b"]),
        ({"org": ORG, "tier": "gold"}, []),
        ({"org": ORG}, []),
        ({"groups": ["eng"]}, []),
    ],
)
def test_visible_models(policy: LoadedPolicy, claims: dict[str, Any], expected: list[str]) -> None:
    models = ["llama-8b", "llama-70b", "llama-3-preview", "qwen-2", "mistral-7b", "gpt-4"]
    assert visible_models(policy, claims, models) == expected


def test_without_a_tenant_section_decisions_have_no_tenant(tmp_path: Path) -> None:
    (tmp_path / "p.yaml").write_text(POLICY.replace("tenant: {claim: org, required: true}\n", ""))
    decision = decide(load_policy_dir(tmp_path), {"groups": ["eng"], "org": ORG}, facts())
    assert decision.allowed
    assert decision.tenant is None


def test_optional_tenant_is_read_when_present(tmp_path: Path) -> None:
    (tmp_path / "p.yaml").write_text(POLICY.replace("required: true", "required: false"))
    loaded = load_policy_dir(tmp_path)
    assert decide(loaded, {"groups": ["eng"]}, facts()).tenant is None
    assert decide(loaded, {"groups": ["eng"], "org": ORG}, facts()).tenant == ORG
