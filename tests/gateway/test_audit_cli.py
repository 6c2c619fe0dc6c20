"""``python -m gateway audit keygen|verify|read|stats`` as auditors and operators use them."""

from __future__ import annotations

import asyncio
import datetime as dt
import io
import json
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization

from gateway.audit.format import records_path
from gateway.audit.keys import AuditKeyPaths
from gateway.cli import main
from gateway.cli.audit import Progress, parse_time
from tests.gateway.test_audit_support import PASSPHRASE, sample_record, settings_for, write_all

BASE = dt.datetime(2026, 1, 1, tzinfo=dt.UTC).timestamp()


def cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


@dataclass(frozen=True)
class Setup:
    root: Path
    keys: Path
    passphrase: Path
    log: Path


def _record(number: int) -> Any:
    return sample_record(
        number,
        time=BASE + number * 60,
        subject=("alice", "bob")[number % 2],
        tenant=("acme", "globex")[number % 3 == 0],
        decision=("allowed", "no_role")[number % 4 == 3],
        model=("small", "large")[number >= 6],
    )


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Setup:
    root = tmp_path_factory.mktemp("audit-cli")
    passphrase = root / "passphrase"
    passphrase.write_bytes(PASSPHRASE + b"\n")
    assert main(["audit", "keygen", str(root / "keys"), "--passphrase-file", str(passphrase)]) == 0
    settings = settings_for(root / "log", AuditKeyPaths(root / "keys"))
    asyncio.run(write_all(settings, [_record(number) for number in range(8)]))
    return Setup(root, root / "keys", passphrase, root / "log")


def test_keygen_writes_an_encrypted_auditor_key_and_a_signing_key(setup: Setup) -> None:
    modes = {path.name: stat.S_IMODE(path.stat().st_mode) for path in setup.keys.iterdir()}
    assert modes == {
        "auditor-key.pem": 0o600,
        "auditor-public.pem": 0o644,
        "signing-key.pem": 0o600,
        "signing-public.pem": 0o644,
    }
    private = (setup.keys / "auditor-key.pem").read_bytes()
    assert private.startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----")
    with pytest.raises(TypeError):
        serialization.load_pem_private_key(private, password=None)
    assert serialization.load_pem_private_key(private, password=PASSPHRASE) is not None


@pytest.mark.parametrize(
    ("passphrase", "extra", "error"),
    [
        (b"too short\n", [], "at least 12 characters"),
        (PASSPHRASE, [], "already holds auditor-key.pem"),
        (None, [], "give --passphrase-file"),
    ],
    ids=["short passphrase", "keys exist", "no terminal to prompt on"],
)
def test_keygen_refuses(
    setup: Setup,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    passphrase: bytes | None,
    extra: list[str],
    error: str,
) -> None:
    args = ["audit", "keygen", str(setup.keys if passphrase == PASSPHRASE else tmp_path / "keys")]
    if passphrase is not None:
        (tmp_path / "pass").write_bytes(passphrase)
        args += ["--passphrase-file", str(tmp_path / "pass")]
    code, _, err = cli(args + extra, capsys)
    assert code == 2
    assert error in err


def test_keygen_force_replaces_the_keys(
    setup: Setup, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    keys = tmp_path / "keys"
    args = ["audit", "keygen", str(keys), "--passphrase-file", str(setup.passphrase)]
    assert cli(args, capsys)[0] == 0
    before = (keys / "signing-key.pem").read_bytes()
    assert cli([*args, "--force"], capsys)[0] == 0
    assert (keys / "signing-key.pem").read_bytes() != before


def test_verify_passes_an_intact_log(setup: Setup, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = cli(
        ["audit", "verify", str(setup.log), "--signing-key", str(setup.keys / "signing-public.pem")], capsys
    )
    assert (code, err) == (0, "")
    assert out.strip() == "ok: 1 segments, 8 records, 2 checkpoints"


def test_verify_names_the_first_bad_record(
    setup: Setup, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = tmp_path / "log"
    log.mkdir()
    for path in setup.log.iterdir():
        (log / path.name).write_bytes(path.read_bytes())
    lines = records_path(log, 1).read_bytes().split(b"\n")
    del lines[3]
    records_path(log, 1).write_bytes(b"\n".join(lines))
    code, out, err = cli(
        ["audit", "verify", str(log), "--signing-key", str(setup.keys / "signing-public.pem")], capsys
    )
    assert code == 1
    assert out == ""
    assert "FAILED: segment 1 seq 3: record deleted" in err


def test_verify_refuses_a_key_of_the_wrong_kind(setup: Setup, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = cli(
        ["audit", "verify", str(setup.log), "--signing-key", str(setup.keys / "auditor-public.pem")], capsys
    )
    assert code == 2
    assert "expected the gateway's Ed25519 signing public key" in err


def read_args(setup: Setup, *extra: str) -> list[str]:
    key = str(setup.keys / "auditor-key.pem")
    return ["audit", "read", str(setup.log), "--key", key, "--passphrase-file", str(setup.passphrase), *extra]


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        ([], list(range(8))),
        (["--subject", "alice"], [0, 2, 4, 6]),
        (["--tenant", "globex"], [0, 3, 6]),
        (["--decision", "no_role"], [3, 7]),
        (["--model", "large"], [6, 7]),
        (["--since", "2026-01-01T00:03:00Z"], [3, 4, 5, 6, 7]),
        (["--until", "2026-01-01T00:02:00"], [0, 1]),
        (
            ["--since", "2026-01-01T00:01:00+00:00", "--until", "2026-01-01T00:05:00Z", "--subject", "bob"],
            [1, 3],
        ),
        (["--model", "nonexistent"], []),
    ],
)
def test_read_decrypts_and_filters(
    setup: Setup, capsys: pytest.CaptureFixture[str], filters: list[str], expected: list[int]
) -> None:
    code, out, err = cli(read_args(setup, *filters), capsys)
    assert code == 0, err
    records = [json.loads(line) for line in out.splitlines()]
    assert [r["request_id"] for r in records] == [f"req-{n:06d}" for n in expected]
    assert f"{len(expected)} record(s)" in err
    if records:
        assert records[0]["time"].endswith("Z") and records[0]["segment"] == 1


def test_read_as_a_table(setup: Setup, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = cli(read_args(setup, "--format", "table", "--decision", "no_role"), capsys)
    assert code == 0
    header, *rows = out.splitlines()
    assert header.split() == [
        "time",
        "where",
        "subject",
        "tenant",
        "endpoint",
        "model",
        "decision",
        "status",
        "tokens",
        "ms",
    ]
    assert [row.split()[:7] for row in rows] == [
        ["2026-01-01T00:03:00.000000Z", "1:4", "bob", "globex", "chat.completions", "small", "no_role"],
        ["2026-01-01T00:07:00.000000Z", "1:8", "bob", "acme", "chat.completions", "large", "no_role"],
    ]


def test_read_with_a_wrong_passphrase_or_another_key_fails(
    setup: Setup, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    wrong = tmp_path / "wrong"
    wrong.write_text("not the passphrase at all")
    args = read_args(setup)
    args[args.index("--passphrase-file") + 1] = str(wrong)
    code, out, err = cli(args, capsys)
    assert (code, out) == (2, "")
    assert "wrong passphrase" in err
    other = tmp_path / "other-keys"
    assert cli(["audit", "keygen", str(other), "--passphrase-file", str(setup.passphrase)], capsys)[0] == 0
    args = read_args(setup)
    args[args.index("--key") + 1] = str(other / "auditor-key.pem")
    code, out, err = cli(args, capsys)
    assert (code, out) == (1, "")
    assert "segment 1 is encrypted for auditor key" in err


def test_stats_needs_no_key(setup: Setup, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = cli(["audit", "stats", str(setup.log)], capsys)
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["segment", "created", "records", "bytes", "checkpoints", "state"]
    assert lines[1].split()[0] == "1" and lines[1].split()[2:3] == ["8"] and lines[1].endswith("closed")
    assert lines[-1].startswith("1 segment(s), 8 record(s)")
    code, out, _ = cli(["audit", "stats", str(setup.log), "--format", "json"], capsys)
    assert json.loads(out)["records"] == 8


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-01-01", BASE),
        ("2026-01-01T01:00:00Z", BASE + 3600),
        ("2026-01-01T02:00:00+01:00", BASE + 3600),
        ("90s", BASE - 90),
        ("15m", BASE - 900),
        ("2h", BASE - 7200),
        ("7d", BASE - 7 * 86_400),
    ],
)
def test_parse_time(text: str, expected: float) -> None:
    assert parse_time(text, now=BASE) == expected


@pytest.mark.parametrize("text", ["yesterday", "5 minutes", "-3h", ""])
def test_parse_time_refuses_what_it_cannot_read(text: str) -> None:
    with pytest.raises(ValueError, match="not a time"):
        parse_time(text)


def test_progress_stays_quiet_on_short_runs_and_reports_long_ones() -> None:
    stream = io.StringIO()
    progress = Progress("verify", stream)
    progress(1, 3, 100)
    assert stream.getvalue() == ""
    progress.started -= 5
    progress.shown -= 5
    progress(2, 3, 200)
    progress(3, 3, 300)
    assert stream.getvalue() == "verify: 2/3 segments, 200 records\nverify: 3/3 segments, 300 records\n"
