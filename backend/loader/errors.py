"""The loader's exceptions: each message names the file and what is wrong with it."""

from __future__ import annotations

from pathlib import Path


class ModelLoadError(Exception):
    """A checkpoint cannot be loaded: missing or tampered file, bad metadata, absent or misshapen tensor."""

    def __init__(self, message: str, *, path: str | Path | None = None) -> None:
        self.path = Path(path) if path is not None else None
        super().__init__(f"{path}: {message}" if path is not None else message)


class ChatTemplateError(Exception):
    """A chat template failed to compile or render, or tried to reach outside its sandbox."""
