"""The auditors' part of `make demo`: keys for the audit log, then verifying and reading it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

# A demo passphrase for the auditors' private key; real auditors keep theirs to themselves.
DEMO_PASSPHRASE = "demo-auditor-passphrase"  # noqa: S105 - a demo value, printed in the docs
DEMO_HMAC_KEY = "demo-audit-hmac-key-0123456789abcdef"


def row(label: str, value: str) -> None:
    print(f"  {label:<28} {value}")


def audit_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", "audit", *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )


def prepare_audit(run_dir: Path) -> dict[str, str]:
    """Auditor and signing keys (made once), and the gateway's ``audit:`` settings."""
    keys = run_dir / "audit-keys"
    passphrase = keys / "passphrase"
    if not (keys / "auditor-key.pem").exists():
        keys.mkdir(parents=True, exist_ok=True)
        passphrase.write_text(DEMO_PASSPHRASE)
        made = audit_cli("keygen", str(keys), "--passphrase-file", str(passphrase))
        if made.returncode != 0:
            raise RuntimeError(f"audit keygen failed:\n{made.stderr}")
    return {
        "directory": str(run_dir / "audit"),
        "auditor_public_key": str(keys / "auditor-public.pem"),
        "signing_key": str(keys / "signing-key.pem"),
        "hmac_key": DEMO_HMAC_KEY,
    }


def run_audit_demo(run_dir: Path) -> bool:
    """As an auditor would: verify the chain and signatures, then decrypt and read the records."""
    print("\n== Auditors: verify and read the encrypted audit log (python -m gateway audit)")
    keys, log = run_dir / "audit-keys", run_dir / "audit"
    verified = audit_cli("verify", str(log), "--signing-key", str(keys / "signing-public.pem"))
    summary = (verified.stdout.strip() or verified.stderr.strip()).splitlines()
    row("audit verify", summary[-1] if summary else f"exit {verified.returncode}")
    stats = audit_cli("stats", str(log))
    for line in stats.stdout.strip().splitlines()[:4]:
        print(f"    {line}")
    read = audit_cli(
        "read", str(log), "--key", str(keys / "auditor-key.pem"),
        "--passphrase-file", str(keys / "passphrase"), "--since", "10m", "--format", "table",
    )  # fmt: skip
    lines = read.stdout.rstrip().splitlines()
    print(f"  audit read (the last {min(8, max(len(lines) - 1, 0))} of this run's records):")
    for line in [*lines[:1], *lines[1:][-8:]]:
        print(f"    {line[:150]}")
    plain = any(b"alice" in path.read_bytes() for path in log.iterdir() if path.is_file())
    row("subjects in clear on disk", "yes (unexpected)" if plain else "none: every record is encrypted")
    return verified.returncode == 0 and read.returncode == 0 and not plain
