"""The policy models: strict, immutable, safe defaults; the shipped files and schema.json stay valid."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from gateway.policy.schema import Binding, Condition, PolicyFile, Role, json_schema, json_schema_text
from gateway.policy.store import load_policy_dir

POLICIES = Path(__file__).resolve().parents[2] / "policies"


def test_schema_json_in_the_repo_is_current() -> None:
    # Regenerate with: python -m gateway policy schema
    assert (POLICIES / "schema.json").read_text(encoding="utf-8") == json_schema_text()


def test_every_schema_property_has_a_description() -> None:
    schema = json_schema()
    objects: list[tuple[str, dict[str, Any]]] = [("PolicyFile", schema)]
    objects += list(schema["$defs"].items())
    missing = [
        f"{name}.{field}"
        for name, definition in objects
        for field, spec in definition.get("properties", {}).items()
        if not spec.get("description")
    ]
    assert missing == []
    assert schema["title"] == "Warden policy file"
    assert schema["additionalProperties"] is False


@pytest.mark.parametrize("directory", ["", "examples"])
def test_shipped_policies_load(directory: str) -> None:
    loaded = load_policy_dir(POLICIES / directory)
    assert loaded.document.bindings
    assert loaded.document.roles


def test_role_defaults_are_the_safe_ones() -> None:
    role = Role(max_tokens=100)
    assert role.models == () and role.deny_models == ()
    assert role.endpoints == ("chat.completions", "completions", "models")
    assert role.sampling.n_max == 1 and role.sampling.allow_stream is True
    assert role.guards.injection.action == "block"
    assert role.guards.fail_open is False
    assert role.guards.pii.redact_output is True
    assert role.cache.enabled is False and role.cache.allow_nondeterministic is False
    assert role.audit.prompts == "hmac" and role.audit.outputs == "hmac"


def test_models_are_frozen_and_strict() -> None:
    role = Role(max_tokens=100)
    with pytest.raises(ValidationError, match="frozen"):
        role.max_tokens = 10**9
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        Role.model_validate({"max_tokens": 1, "allow_everything": True})
    with pytest.raises(ValidationError, match="valid integer"):
        Role.model_validate({"max_tokens": "100"})
    with pytest.raises(ValidationError, match="valid boolean"):
        Role.model_validate({"max_tokens": 1, "guards": {"fail_open": "true"}})


@pytest.mark.parametrize(
    ("condition", "valid"),
    [
        ({"claim": "groups", "contains": "eng"}, True),
        ({"claim": "realm_access.roles", "any_of": ["a", 1, True]}, True),
        ({"claim": "email_verified", "equals": False}, True),
        ({"claim": "https://acme.example/groups", "contains": "eng"}, True),
        ({"claim": "groups"}, False),
        ({"claim": "groups", "contains": "a", "equals": "b"}, False),
        ({"claim": "groups", "contains": ""}, False),
        ({"claim": "groups", "any_of": []}, False),
        ({"claim": "groups", "equals": 1.5}, False),
        ({"claim": "a..b", "equals": "x"}, False),
        ({"claim": ".a", "equals": "x"}, False),
        ({"claim": "a b", "equals": "x"}, False),
    ],
)
def test_condition_needs_one_test_and_a_clean_claim_path(condition: dict[str, Any], valid: bool) -> None:
    if valid:
        Condition.model_validate(condition)
    else:
        with pytest.raises(ValidationError):
            Condition.model_validate(condition)


def test_when_takes_one_condition_or_a_list() -> None:
    single = Binding.model_validate({"name": "b", "when": {"claim": "a", "equals": "x"}, "roles": ["r"]})
    several = Binding.model_validate(
        {
            "name": "b",
            "when": [{"claim": "a", "equals": "x"}, {"claim": "c", "contains": "y"}],
            "roles": ["r"],
        }
    )
    assert isinstance(single.when, Condition)
    assert isinstance(several.when, tuple) and len(several.when) == 2


def test_version_must_be_one() -> None:
    assert PolicyFile.model_validate({"version": 1}).roles == {}
    with pytest.raises(ValidationError):
        PolicyFile.model_validate({"version": 2})
    assert json.loads(json_schema_text())["properties"]["version"]["const"] == 1


def test_pii_defaults_mask_every_type_found_without_a_model() -> None:
    pii = Role(max_tokens=1).guards.pii
    assert pii.operator == "mask" and pii.score_threshold == 0.5
    assert pii.allow_list == () and pii.thresholds == {}
    assert {"EMAIL_ADDRESS", "CREDIT_CARD", "PRIVATE_KEY", "API_KEY"} <= set(pii.entities)
    assert not {"PERSON", "LOCATION", "ORGANIZATION"} & set(pii.entities)  # these need a spaCy model


@pytest.mark.parametrize(
    ("pii", "error"),
    [
        ({"entities": ["EMAIL"]}, "Input should be 'EMAIL_ADDRESS'"),
        ({"operator": "delete"}, "Input should be 'mask', 'replace', 'hash' or 'encrypt'"),
        ({"score_threshold": 1.5}, "less than or equal to 1"),
        ({"thresholds": {"PHONE": 0.3}}, "Input should be 'EMAIL_ADDRESS'"),
        ({"allow_list": [""]}, "at least 1 character"),
        ({"replacement": "x" * 65}, "at most 64 characters"),
    ],
)
def test_pii_settings_are_checked(pii: dict[str, Any], error: str) -> None:
    with pytest.raises(ValidationError, match=error):
        Role.model_validate({"max_tokens": 1, "guards": {"pii": pii}})
