"""``token keygen`` and ``token mint``: real keys on disk, tokens that the authenticator accepts."""

from __future__ import annotations

import asyncio
import stat
from pathlib import Path
from typing import Any

import jwt
import pytest

from gateway.auth import Authenticator, AuthSettings, Principal
from gateway.cli import main

ISSUER = "https://dev.example"


def cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def authenticate(settings: dict[str, Any], minted: str) -> Principal:
    async def scenario() -> Principal:
        authenticator = Authenticator(AuthSettings.model_validate(settings))
        await authenticator.start()
        try:
            return await authenticator.authenticate(f"Bearer {minted}")
        finally:
            await authenticator.aclose()

    return asyncio.run(scenario())


def issuer_with(key: dict[str, Any]) -> dict[str, Any]:
    return {"issuers": [{"issuer": ISSUER, "audiences": ["warden"], "keys": [key]}]}


@pytest.mark.parametrize("alg", ["ES256", "ES384", "EdDSA"])
def test_keygen_writes_private_key_0600_and_public_key_0644(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], alg: str
) -> None:
    code, out, err = cli(["token", "keygen", str(tmp_path / "keys"), "--alg", alg], capsys)
    assert code == 0
    assert "development only" in err
    private, public = tmp_path / "keys" / "jwt-private.pem", tmp_path / "keys" / "jwt-public.pem"
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert stat.S_IMODE(public.stat().st_mode) == 0o644
    assert out.split() == [str(private), str(public)]
    assert b"PRIVATE KEY" in private.read_bytes()
    assert b"BEGIN PUBLIC KEY" in public.read_bytes()


def test_keygen_keeps_existing_keys_unless_forced(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(["token", "keygen", str(tmp_path)], capsys)[0] == 0
    first = (tmp_path / "jwt-private.pem").read_bytes()
    code, _, err = cli(["token", "keygen", str(tmp_path)], capsys)
    assert code == 2
    assert "--force" in err
    assert (tmp_path / "jwt-private.pem").read_bytes() == first
    assert cli(["token", "keygen", str(tmp_path), "--force"], capsys)[0] == 0
    assert (tmp_path / "jwt-private.pem").read_bytes() != first
    assert stat.S_IMODE((tmp_path / "jwt-private.pem").stat().st_mode) == 0o600


@pytest.mark.parametrize("alg", ["ES256", "EdDSA"])
def test_minted_token_round_trips_through_the_authenticator(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], alg: str
) -> None:
    assert cli(["token", "keygen", str(tmp_path), "--alg", alg], capsys)[0] == 0
    argv = ["token", "mint", "--key", str(tmp_path / "jwt-private.pem"), "--alg", alg, "--iss", ISSUER]
    argv += ["--aud", "warden", "--sub", "alice", "--groups", "eng,ml", "--tenant-claim", "org=acme"]
    argv += ["--claim", "level=3", "--claim", "team=platform", "--kid", "dev-1", "--ttl", "600"]
    code, out, err = cli(argv, capsys)
    assert code == 0
    assert "development only" in err
    minted = out.strip()
    assert jwt.get_unverified_header(minted)["kid"] == "dev-1"
    key = {"pem": str(tmp_path / "jwt-public.pem"), "algorithms": [alg], "kid": "dev-1"}
    principal = authenticate(issuer_with(key), minted)
    assert (principal.subject, principal.issuer) == ("alice", ISSUER)
    assert principal.claims["groups"] == ["eng", "ml"]
    assert principal.claims["org"] == "acme"
    assert principal.claims["level"] == 3
    assert principal.claims["team"] == "platform"
    assert principal.claims["exp"] - principal.claims["iat"] == 600


def test_minted_hs256_token_round_trips_with_a_secret_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    secret = "0123456789abcdef0123456789abcdef-dev"
    (tmp_path / "secret").write_text(secret + "\n")
    argv = ["token", "mint", "--key", str(tmp_path / "secret"), "--alg", "HS256"]
    code, out, _ = cli([*argv, "--iss", ISSUER, "--aud", "warden", "--sub", "svc"], capsys)
    assert code == 0
    principal = authenticate(issuer_with({"secret": secret, "algorithms": ["HS256"]}), out.strip())
    assert principal.subject == "svc"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--claim", "exp=99999999999"], "'exp' is set by"),
        (["--claim", "noequals"], "expected NAME=VALUE"),
        (["--ttl", "0"], "--ttl must be"),
        (["--alg", "HS256"], "HS256 needs a secret file"),
    ],
)
def test_mint_refuses_bad_options(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], message: str
) -> None:
    assert cli(["token", "keygen", str(tmp_path)], capsys)[0] == 0
    argv = ["token", "mint", "--key", str(tmp_path / "jwt-private.pem"), "--iss", ISSUER, "--aud", "w"]
    code, out, err = cli([*argv, "--sub", "alice", *extra], capsys)
    assert code == 2
    assert out == ""
    assert message in err


def test_help_says_development_only(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["token", "--help"], ["token", "mint", "--help"], ["token", "keygen", "--help"]):
        with pytest.raises(SystemExit) as exit_info:
            cli(argv, capsys)
        assert exit_info.value.code == 0
        assert "development only" in " ".join(capsys.readouterr().out.lower().split())
