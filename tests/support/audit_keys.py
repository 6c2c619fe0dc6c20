"""Audit keys made by the real CLI (``python -m gateway audit keygen``) and the gateway's audit settings."""

from __future__ import annotations

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
    made = subprocess.run(
        [sys.executable, "-m", "gateway", *command], capture_output=True, text=True, timeout=60, check=False
    )
    if made.returncode != 0:
        raise RuntimeError(f"audit keygen failed: {made.stderr}")
    return {
        "directory": str(root / "audit"),
        "auditor_public_key": str(keys / "auditor-public.pem"),
        "signing_key": str(keys / "signing-key.pem"),
        "hmac_key": HMAC_KEY,
    }
