"""Audit keys made by the real CLI (``python -m gateway audit keygen``), the gateway's audit settings,
and the auditors' ``audit verify`` / ``audit read`` on the log those settings write."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

HMAC_KEY = "an-audit-hmac-key-of-at-least-32-bytes!"
PASSPHRASE = "test audit passphrase"


def audit_settings(root: Path, passphrase: str = PASSPHRASE) -> dict[str, Any]:
    """Keys under ``root/keys`` and the ``audit`` settings section that writes to ``root/audit``."""
    keys = root / "keys"
    keys.mkdir(parents=True, exist_ok=True)
    passphrase_file = keys / "passphrase"
    passphrase_file.write_text(passphrase)
    command = ["audit", "keygen", str(keys), "--passphrase-file", str(passphrase_file)]
    made = gateway_cli(*command)
    if made.returncode != 0:
        raise RuntimeError(f"audit keygen failed: {made.stderr}")
    return {
        "directory": str(root / "audit"),
        "auditor_public_key": str(keys / "auditor-public.pem"),
        "signing_key": str(keys / "signing-key.pem"),
        "hmac_key": HMAC_KEY,
    }


def gateway_cli(*args: str, timeout_s: float = 600) -> subprocess.CompletedProcess[str]:
    """``python -m gateway ARGS``, its output captured; the caller checks the exit status."""
    command = [sys.executable, "-m", "gateway", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, check=False)


def verify_audit(root: Path) -> subprocess.CompletedProcess[str]:
    """``audit verify`` of the log that ``audit_settings(root)`` configures."""
    signing_public = root / "keys" / "signing-public.pem"
    return gateway_cli("audit", "verify", str(root / "audit"), "--signing-key", str(signing_public))


def read_audit(root: Path) -> list[dict[str, Any]]:
    """Every record of that log, decrypted with the auditors' key (``audit read --format jsonl``)."""
    keys = root / "keys"
    done = gateway_cli(
        "audit", "read", str(root / "audit"), "--key", str(keys / "auditor-key.pem"),
        "--passphrase-file", str(keys / "passphrase"), "--format", "jsonl",
    )  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"audit read failed: {done.stderr}")
    return [json.loads(line) for line in done.stdout.splitlines() if line.strip()]
