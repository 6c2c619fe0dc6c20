"""`python -m gateway policy check|explain|schema`: outputs and exit codes."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from gateway.cli import main
from gateway.policy.schema import json_schema_text

POLICIES = Path(__file__).resolve().parents[2] / "policies"
EXAMPLES = POLICIES / "examples"
CONTRACTOR = json.dumps({"org": "acme", "groups": ["contractors", "engineering"], "email_verified": True})


def test_check_prints_version_and_counts(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["policy", "check", str(EXAMPLES)]) == 0
    out, err = capsys.readouterr()
    assert re.fullmatch(r"OK [0-9a-f]{16} \(2 files, 5 roles, 5 bindings\)\n", out)
    assert err == ""


def test_check_reports_every_error_and_fails(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "team.yaml").write_text("version: 1\nroles:\n  engineer:\n    max_tokens: many\n    x: 1\n")
    assert main(["policy", "check", str(tmp_path)]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err.splitlines() == [
        "team.yaml line 4: roles.engineer.max_tokens: Input should be a valid integer",
        "team.yaml line 5: roles.engineer.x: Extra inputs are not permitted",
        f"2 error(s) in {tmp_path}",
    ]


def test_check_warns_about_roles_no_binding_grants(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "p.yaml").write_text("version: 1\nroles:\n  orphan: {max_tokens: 1}\n")
    assert main(["policy", "check", str(tmp_path)]) == 0
    out, err = capsys.readouterr()
    assert out.startswith("OK ") and "(1 files, 1 roles, 0 bindings)" in out
    assert err == "warning: roles.orphan: no binding grants this role\n"


def explain(claims: str, request: dict[str, object], directory: Path = EXAMPLES) -> list[str]:
    return ["policy", "explain", str(directory), "--claims", claims, "--request", json.dumps(request)]


def rows(out: str) -> dict[str, str]:
    return dict(line.strip().split(":", 1) for line in out.splitlines()[1:])


def test_explain_allowed(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(explain(CONTRACTOR, {"model": "llama-3.1-8b-instruct"})) == 0
    out, _ = capsys.readouterr()
    assert out.splitlines()[0] == "allowed"
    fields = {key: value.strip() for key, value in rows(out).items()}
    assert fields["code"] == "allowed"
    assert fields["rule"] == "roles.engineer.models[0]"
    assert fields["roles"] == "engineer, contractor"
    assert fields["bindings"] == "engineers -> engineer; contractors -> contractor"
    assert fields["tenant"] == "acme"
    assert fields["max_tokens"] == "4096"
    assert "allow_stream=true" in fields["sampling"]
    assert "injection.action=block" in fields["guards"]  # the contractor's stricter guard applies
    assert fields["audit"] == "prompts=encrypt, outputs=encrypt"


@pytest.mark.parametrize(
    ("request_json", "code", "rule"),
    [
        ({"model": "llama-3.1-70b-instruct"}, "model_not_allowed", "roles.contractor.deny_models[1]"),
        (
            {"model": "llama-3.1-8b-instruct", "max_tokens": 5000},
            "max_tokens_exceeded",
            "roles.engineer.max_tokens",
        ),
        ({"model": "gpt-4"}, "model_not_allowed", "roles.engineer.models"),
    ],
)
def test_explain_denied(
    capsys: pytest.CaptureFixture[str], request_json: dict[str, object], code: str, rule: str
) -> None:
    assert main(explain(CONTRACTOR, request_json)) == 1
    out, _ = capsys.readouterr()
    assert out.splitlines()[0] == "denied"
    fields = {key: value.strip() for key, value in rows(out).items()}
    assert (fields["code"], fields["rule"], fields["max_tokens"]) == (code, rule, "-")
    assert "sampling" not in fields


def test_explain_reads_claims_from_a_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    claims = tmp_path / "claims.json"
    claims.write_text(json.dumps({"org": "acme"}))
    assert main(explain(f"@{claims}", {"endpoint": "models"})) == 1
    out, _ = capsys.readouterr()
    assert "no_role" in out and "default-deny" in out


@pytest.mark.parametrize(
    ("claims", "request_json", "message"),
    [
        ("{not json", {}, "error: --claims: not valid JSON (line 1 column 2)"),
        ("[1]", {}, "error: --claims: expected a JSON object"),
        ("@/nonexistent/claims.json", {}, "error: --claims: cannot read /nonexistent/claims.json"),
        ("{}", {"modle": "x"}, "error: --request: modle: Extra inputs are not permitted"),
        ("{}", {"endpoint": "embeddings"}, "error: --request: endpoint: Input should be"),
        ("{}", {"n": 0}, "error: --request: n: Input should be greater than or equal to 1"),
    ],
)
def test_explain_bad_input_exits_2(
    capsys: pytest.CaptureFixture[str], claims: str, request_json: dict[str, object], message: str
) -> None:
    assert main(explain(claims, request_json)) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith(message)


def test_explain_on_an_invalid_policy_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "p.yaml").write_text("version: 3\n")
    assert main(explain("{}", {}, tmp_path)) == 2
    assert "p.yaml line 1: version: unsupported format version" in capsys.readouterr().err


def test_schema_writes_the_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "out" / "schema.json"
    assert main(["policy", "schema", "--out", str(target)]) == 0
    assert capsys.readouterr().out == f"wrote {target}\n"
    assert target.read_text(encoding="utf-8") == json_schema_text()
    assert target.read_text(encoding="utf-8") == (POLICIES / "schema.json").read_text(encoding="utf-8")


def test_schema_to_stdout(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["policy", "schema", "--out", "-"]) == 0
    assert json.loads(capsys.readouterr().out)["title"] == "Warden policy file"
