"""``python -m gateway policy check|explain|schema``: tools for the people who write policies."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from pydantic import Field, StrictBool, StrictInt, ValidationError

from gateway.config import StrictModel
from gateway.policy.claims import matching_bindings
from gateway.policy.rbac import Decision, RequestFacts, decide
from gateway.policy.schema import Endpoint, json_schema_text
from gateway.policy.store import LoadedPolicy, PolicyError, load_policy_dir

DEFAULT_SCHEMA_PATH = Path("policies/schema.json")


class ExplainRequest(StrictModel):
    """The request facts ``policy explain`` accepts as JSON."""

    endpoint: Endpoint = "chat.completions"
    model: str | None = None
    max_tokens: StrictInt | None = Field(None, ge=1)
    temperature: float | None = None
    top_p: float | None = None
    n: StrictInt = Field(1, ge=1)
    stream: StrictBool = False


def register(commands: Any) -> None:
    parser: argparse.ArgumentParser = commands.add_parser("policy", help="check and explain RBAC policies")
    actions = parser.add_subparsers(dest="policy_command", required=True, metavar="ACTION")

    check = actions.add_parser(
        "check",
        help="validate a policy directory",
        description="Loads every *.yaml file in DIRECTORY as the gateway would. Prints the version and "
        "counts, or every error with its file, line and field (exit 1).",
    )
    check.add_argument("directory", type=Path)
    check.set_defaults(handler=run_check)

    explain = actions.add_parser(
        "explain",
        help="show the decision for one caller and one request",
        description="Decides as the gateway would and prints the outcome, the rule that decided it, the "
        "roles and the effective settings. Exit 0 if allowed, 1 if denied, 2 on bad input.",
    )
    explain.add_argument("directory", type=Path)
    explain.add_argument(
        "--claims", required=True, metavar="JSON", help="the token's claims as a JSON object, or @FILE"
    )
    explain.add_argument(
        "--request",
        required=True,
        metavar="JSON",
        help='JSON object with endpoint (default "chat.completions"), model, max_tokens, temperature, '
        "top_p, n, stream; or @FILE",
    )
    explain.set_defaults(handler=run_explain)

    schema = actions.add_parser(
        "schema",
        help="write the JSON Schema of a policy file",
        description="Editors use it to check policy files while they are typed.",
    )
    schema.add_argument(
        "--out",
        type=Path,
        default=DEFAULT_SCHEMA_PATH,
        help=f"where to write it, '-' for standard output (default {DEFAULT_SCHEMA_PATH})",
    )
    schema.set_defaults(handler=run_schema)


def run_check(args: argparse.Namespace) -> int:
    policy = _load(args.directory)
    if policy is None:
        return 1
    doc = policy.document
    counts = f"{len(policy.files)} files, {len(doc.roles)} roles, {len(doc.bindings)} bindings"
    print(f"OK {policy.version} ({counts})")
    granted = {role for binding in doc.bindings for role in binding.roles}
    for name in doc.roles:
        if name not in granted:
            print(f"warning: roles.{name}: no binding grants this role", file=sys.stderr)
    return 0


def run_explain(args: argparse.Namespace) -> int:
    claims = _json_object("--claims", args.claims)
    raw_request = _json_object("--request", args.request)
    if claims is None or raw_request is None:
        return 2
    try:
        request = ExplainRequest.model_validate(raw_request)
    except ValidationError as exc:
        for error in exc.errors(include_url=False, include_input=False):
            field = ".".join(str(part) for part in error["loc"])
            print(f"error: --request: {field}: {error['msg']}", file=sys.stderr)
        return 2
    policy = _load(args.directory)
    if policy is None:
        return 2
    decision = decide(policy, claims, RequestFacts(**request.model_dump()))
    bindings = [f"{b.name} -> {', '.join(b.roles)}" for b in matching_bindings(policy.document, claims)]
    _print_decision(decision, bindings)
    return 0 if decision.allowed else 1


def run_schema(args: argparse.Namespace) -> int:
    text = json_schema_text()
    if str(args.out) == "-":
        sys.stdout.write(text)
        return 0
    try:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text, encoding="utf-8")
    except OSError as exc:
        print(f"error: {args.out}: cannot write ({exc.strerror})", file=sys.stderr)
        return 1
    print(f"wrote {args.out}")
    return 0


def _load(directory: Path) -> LoadedPolicy | None:
    try:
        return load_policy_dir(directory)
    except PolicyError as exc:
        for line in exc.errors:
            print(line, file=sys.stderr)
        print(f"{len(exc.errors)} error(s) in {directory}", file=sys.stderr)
        return None


def _json_object(option: str, value: str) -> dict[str, Any] | None:
    try:
        text = Path(value[1:]).read_text(encoding="utf-8") if value.startswith("@") else value
    except OSError as exc:
        print(f"error: {option}: cannot read {value[1:]} ({exc.strerror})", file=sys.stderr)
        return None
    try:
        loaded = json.loads(text)
    except json.JSONDecodeError as exc:
        print(f"error: {option}: not valid JSON (line {exc.lineno} column {exc.colno})", file=sys.stderr)
        return None
    if not isinstance(loaded, dict):
        print(f"error: {option}: expected a JSON object", file=sys.stderr)
        return None
    return loaded


def _print_decision(decision: Decision, bindings: list[str]) -> None:
    rows = [
        ("code", decision.code),
        ("rule", decision.rule),
        ("reason", decision.reason),
        ("roles", ", ".join(decision.roles) or "(none)"),
        ("bindings", "; ".join(bindings) or "(none matched)"),
        ("tenant", decision.tenant if decision.tenant is not None else "(none)"),
        ("max_tokens", str(decision.max_tokens) if decision.max_tokens is not None else "-"),
        ("policy", decision.policy_version),
    ]
    if decision.settings is not None:
        for section in ("sampling", "guards", "cache", "budget", "audit"):
            values = getattr(decision.settings, section).model_dump(mode="json")
            rows.append((section, ", ".join(f"{key}={value}" for key, value in _flatten(values))))
    print("allowed" if decision.allowed else "denied")
    for label, value in rows:
        print(f"  {label + ':':<12} {value}")


def _flatten(values: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    items: list[tuple[str, Any]] = []
    for key, value in values.items():
        if isinstance(value, dict):
            items.extend(_flatten(value, f"{prefix}{key}."))
        elif isinstance(value, list):
            items.append((f"{prefix}{key}", "[" + ",".join(map(str, value)) + "]"))
        else:
            items.append((f"{prefix}{key}", value if isinstance(value, str) else json.dumps(value)))
    return items
