"""The loader's exceptions: each message names the file and what is wrong with it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


class ModelLoadError(Exception):
    """A checkpoint cannot be loaded: missing or tampered file, bad metadata, absent or misshapen tensor."""

    def __init__(self, message: str, *, path: str | Path | None = None) -> None:
        self.path = Path(path) if path is not None else None
        super().__init__(f"{path}: {message}" if path is not None else message)


class ChatTemplateError(Exception):
    """A chat template failed to compile or render, or tried to reach outside its sandbox."""


def json_object(raw: bytes, path: Path) -> dict[str, Any]:
    """Parse a JSON object from a checkpoint file; anything else is a ``ModelLoadError`` naming it."""
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"invalid JSON ({exc})", path=path) from exc
    if not isinstance(data, dict):
        raise ModelLoadError("expected a JSON object", path=path)
    return data
