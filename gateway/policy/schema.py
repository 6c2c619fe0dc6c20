"""The policy file format: pydantic models, strict and immutable, and the JSON Schema exported from them.

One file is a ``PolicyFile``; the files of a policy directory merge into one ``PolicyDocument``
(see ``gateway.policy.store``). Field docstrings become the descriptions editors show from schema.json.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal, get_args

from pydantic import (
    AfterValidator,
    ConfigDict,
    Discriminator,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    StringConstraints,
    Tag,
    model_validator,
)

from gateway.config import StrictModel

FORMAT_VERSION = 1

Endpoint = Literal["chat.completions", "completions", "models"]
ENDPOINTS: tuple[Endpoint, ...] = ("chat.completions", "completions", "models")

InjectionAction = Literal["block", "sanitize", "flag"]
AuditMode = Literal["omit", "hmac", "encrypt"]

# Names appear in rule paths such as "roles.engineer.models[0]", so they carry no dots or spaces.
NAME_PATTERN = r"^[A-Za-z][A-Za-z0-9_-]{0,63}$"
# A claim name, or a dotted path into nested objects ("realm_access.roles"); no empty segments.
CLAIM_PATTERN = r"^[^\s.]+(\.[^\s.]+)*$"
GLOB_PATTERN = r"^\S+$"
# What each pattern means, for error messages people can act on.
PATTERN_HELP = {
    NAME_PATTERN: "expected a name of up to 64 letters, digits, '_' or '-', starting with a letter",
    CLAIM_PATTERN: "expected a claim name or dotted path, without spaces or empty parts",
    GLOB_PATTERN: "expected a model name or glob without spaces",
}

Name = Annotated[str, StringConstraints(pattern=NAME_PATTERN)]
ClaimPath = Annotated[str, StringConstraints(pattern=CLAIM_PATTERN, max_length=256)]
ModelGlob = Annotated[str, StringConstraints(pattern=GLOB_PATTERN, max_length=256)]
# What the PII guard can find: patterns with checksums and cue words, secrets, and (with a spaCy
# model configured) named entities. Presidio's names where Presidio has one.
PiiEntity = Literal[
    "EMAIL_ADDRESS",
    "PHONE_NUMBER",
    "CREDIT_CARD",
    "IBAN_CODE",
    "US_SSN",
    "IP_ADDRESS",
    "PRIVATE_KEY",
    "AWS_ACCESS_KEY",
    "JWT",
    "GITHUB_TOKEN",
    "SLACK_TOKEN",
    "API_KEY",
    "PERSON",
    "LOCATION",
    "ORGANIZATION",
]
PiiOperator = Literal["mask", "replace", "hash", "encrypt"]
ClaimValue = StrictStr | StrictInt | StrictBool
PositiveInt = Annotated[StrictInt, Field(gt=0)]


def _not_empty(value: tuple[Any, ...]) -> tuple[Any, ...]:
    # Not Field(min_length=1): that also fires when the items were given but invalid, which misleads.
    if not value:
        raise ValueError("give at least one item")
    return value


NotEmpty = AfterValidator(_not_empty)
MIN_ONE = Field(json_schema_extra={"minItems": 1})
Fraction = Annotated[float, Field(ge=0.0, le=1.0)]

# Tags of the `when` union; pydantic puts them into error locations, which the loader drops again.
WHEN_TAGS = frozenset({"condition", "conditions"})

NER_ENTITIES: frozenset[PiiEntity] = frozenset({"PERSON", "LOCATION", "ORGANIZATION"})
# Every type found without an NLP model: personal data and credentials.
DEFAULT_PII_ENTITIES: tuple[PiiEntity, ...] = tuple(e for e in get_args(PiiEntity) if e not in NER_ENTITIES)


class PolicyModel(StrictModel):
    model_config = ConfigDict(use_attribute_docstrings=True)


class Condition(PolicyModel):
    """A test on one verified claim. Give exactly one of `equals`, `contains`, `any_of`."""

    claim: ClaimPath
    """Claim name, or a dotted path into nested objects (`realm_access.roles`). A claim whose own name
    contains dots (`https://example.com/groups`) is found by its full name first."""
    equals: ClaimValue | None = None
    """The claim equals this value exactly (strings are case-sensitive; true is not 1)."""
    contains: Annotated[StrictStr, Field(min_length=1)] | None = None
    """The claim is a list holding this string, or a space-separated string (OAuth `scope`) with this
    word."""
    any_of: Annotated[tuple[ClaimValue, ...], NotEmpty, MIN_ONE] | None = None
    """The claim equals one of these values; for a list claim, the list holds at least one of them."""

    @model_validator(mode="after")
    def _one_test(self) -> Condition:
        given = [name for name in ("equals", "contains", "any_of") if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of equals, contains, any_of")
        return self


def _when_tag(value: Any) -> str:
    return "conditions" if isinstance(value, list | tuple) else "condition"


When = Annotated[
    Annotated[Condition, Tag("condition")]
    | Annotated[tuple[Condition, ...], NotEmpty, MIN_ONE, Tag("conditions")],
    Discriminator(_when_tag),
]


class Binding(PolicyModel):
    """Grants roles to every caller whose verified claims pass the `when` test."""

    name: Name
    """Unique across all files; shown by `policy explain`."""
    description: str | None = None
    """Free text for the people who maintain the policy."""
    when: When
    """One condition, or a list of conditions that must all hold."""
    roles: Annotated[tuple[Name, ...], NotEmpty, MIN_ONE]
    """Roles granted; each must be defined under `roles` in one of the policy files."""


class TenantSource(PolicyModel):
    """Where the tenant (the isolation scope for budgets, cache and audit) comes from."""

    claim: ClaimPath
    """The claim holding the tenant id; its value must be a non-empty string."""
    required: StrictBool = True
    """Deny (code `tenant_missing`) when the claim is absent or not a non-empty string."""


class Sampling(PolicyModel):
    """Limits on sampling parameters; a request outside them is denied (`sampling_not_allowed`)."""

    temperature_max: Annotated[float, Field(ge=0.0)] | None = None
    """Highest temperature a request may ask for; unset means no limit."""
    top_p_min: Fraction | None = None
    """Lowest top_p a request may ask for; unset means no limit."""
    n_max: PositiveInt = 1
    """Most completions per request (`n`)."""
    allow_stream: StrictBool = True
    """Whether `stream: true` is allowed."""


class InjectionGuard(PolicyModel):
    """Prompt-injection scoring of every message."""

    action: InjectionAction = "block"
    """What happens when a message scores at or above the threshold."""
    threshold: Fraction = 0.5
    """Score from 0 to 1 at which the action applies; lower is stricter."""


class PiiGuard(PolicyModel):
    """Redaction of personal data and credentials."""

    redact_input: StrictBool = False
    """Redact prompts before they leave the gateway."""
    redact_output: StrictBool = True
    """Redact completions (streamed or not) before they reach the caller."""
    entities: tuple[PiiEntity, ...] = DEFAULT_PII_ENTITIES
    """Entity types to redact (Presidio names such as EMAIL_ADDRESS). PERSON, LOCATION and
    ORGANIZATION need the gateway's `guards.pii.spacy_model`; without it such a request fails closed."""
    operator: PiiOperator = "mask"
    """mask: `<EMAIL_ADDRESS>`; replace: the `replacement` text; hash: `<EMAIL_ADDRESS:1f0c...>`, a keyed
    hash, so one value always gives the same token; encrypt: `<EMAIL_ADDRESS:key-id:...>`, which holders
    of the gateway's encryption key can turn back into the value."""
    replacement: Annotated[str, StringConstraints(max_length=64)] = "[REDACTED]"
    """The text that replaces every span when `operator` is replace."""
    score_threshold: Fraction = 0.5
    """Confidence from 0 to 1 at which a match is redacted; lower redacts more."""
    thresholds: dict[PiiEntity, Fraction] = Field(default_factory=dict)
    """Per entity type, a confidence that replaces `score_threshold` (e.g. `PHONE_NUMBER: 0.3`)."""
    allow_list: tuple[Annotated[str, StringConstraints(min_length=1, max_length=256)], ...] = ()
    """Values never redacted, compared whole and ignoring case (e.g. a support address)."""


class Guards(PolicyModel):
    """Content guards."""

    injection: InjectionGuard = InjectionGuard()
    """Prompt-injection detection."""
    pii: PiiGuard = PiiGuard()
    """Personal-data redaction."""
    fail_open: StrictBool = False
    """Let requests through when a guard cannot run. Leave false unless availability beats safety."""


class Cache(PolicyModel):
    """Response cache, scoped to tenant and policy version."""

    enabled: StrictBool = False
    """Serve identical requests from the cache."""
    ttl_s: PositiveInt = 300
    """Seconds an entry lives."""
    max_entry_bytes: PositiveInt = 262_144
    """Responses larger than this are not stored."""
    allow_nondeterministic: StrictBool = False
    """Also cache requests that sample (temperature > 0 without a seed)."""
    client_no_cache: StrictBool = True
    """Honour `Cache-Control: no-cache` or `no-store` from the client: the answer then comes from the
    worker and is not stored."""


class TenantBudget(PolicyModel):
    """Limits shared by all callers of one tenant together; unset means no limit."""

    requests_per_minute: PositiveInt | None = None
    """Requests the whole tenant may start per minute."""
    tokens_per_minute: PositiveInt | None = None
    """Tokens the whole tenant may use per minute."""
    tokens_per_day: PositiveInt | None = None
    """Tokens the whole tenant may use per day."""


class Budget(PolicyModel):
    """Rate limits and token budgets per caller; unset means no limit. Buckets refill continuously."""

    requests_per_minute: PositiveInt | None = None
    """Requests a caller may start per minute."""
    tokens_per_minute: PositiveInt | None = None
    """Tokens (prompt plus max_tokens reserved, settled to actual use) per caller per minute."""
    tokens_per_day: PositiveInt | None = None
    """Tokens per caller per day."""
    tenant: TenantBudget = TenantBudget()
    """Limits on the caller's tenant as a whole, checked together with the caller's own."""


class Audit(PolicyModel):
    """How prompts and outputs appear in the audit log (never in clear)."""

    prompts: AuditMode = "hmac"
    """omit: not recorded; hmac: keyed hash (proves a known text was sent); encrypt: readable by auditors."""
    outputs: AuditMode = "hmac"
    """Same choices as `prompts`, for completions."""


class Role(PolicyModel):
    """What a caller holding this role may do."""

    description: str | None = None
    """Free text for the people who maintain the policy."""
    models: tuple[ModelGlob, ...] = ()
    """Models allowed: names or case-sensitive globs (`*`, `?`, `[abc]`). Empty allows none."""
    deny_models: tuple[ModelGlob, ...] = ()
    """Models refused even if another role allows them: a deny in any of the caller's roles wins."""
    endpoints: Annotated[tuple[Endpoint, ...], NotEmpty, MIN_ONE] = ENDPOINTS
    """Endpoints allowed (default: all three)."""
    max_tokens: PositiveInt
    """Cap on max_tokens; a larger request is denied, an absent one gets this value."""
    sampling: Sampling = Sampling()
    """Limits on temperature, top_p, n and streaming."""
    guards: Guards = Guards()
    """Prompt-injection and PII settings (the strictest across a caller's roles apply)."""
    cache: Cache = Cache()
    """Response cache settings (on only if every role allowing the request enables it)."""
    budget: Budget = Budget()
    """Rate limits and token budgets (the most generous of the allowing roles applies)."""
    audit: Audit = Audit()
    """What the audit log keeps of prompts and outputs (the most retentive across roles applies)."""


class PolicyFile(PolicyModel):
    """One Warden policy file. All *.yaml files of a policy directory are merged."""

    model_config = ConfigDict(title="Warden policy file")

    version: Literal[1]
    """Format version of this file; only 1 exists."""
    tenant: TenantSource | None = None
    """Where the tenant comes from (in at most one file)."""
    bindings: tuple[Binding, ...] = ()
    """Claim tests that grant roles; lists from all files are joined in file-name order."""
    roles: dict[Name, Role] = Field(default_factory=dict)
    """Roles by name; a name may be defined in one file only."""


@dataclass(frozen=True, slots=True)
class PolicyDocument:
    """The merged files of one policy directory, checked as a whole (every bound role exists)."""

    tenant: TenantSource | None
    bindings: tuple[Binding, ...]
    roles: Mapping[str, Role]  # read-only view


def json_schema() -> dict[str, Any]:
    schema = PolicyFile.model_json_schema()
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **schema}


def json_schema_text() -> str:
    return json.dumps(json_schema(), indent=2, ensure_ascii=False) + "\n"
