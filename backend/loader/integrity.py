"""SHA-256 pinning of model files, checked before a byte of them is parsed.

The expected value is either one hex digest or a mapping from file name (relative to the model
directory, or the GGUF file's own name) to hex digest:

- a GGUF file: its own SHA-256 (``sha256sum model.gguf``);
- a Hugging Face directory: the SHA-256 of its manifest, the ``sha256sum``-style lines
  ``"<hex digest>  <relative name>\\n"`` of every file the loader reads (shards, index, config,
  tokenizer files, chat template), sorted by name. :func:`directory_digest` computes it. A manifest
  rather than shard digests alone, because the tokenizer and chat template shape every prompt too.

Files are hashed through the same open file objects the loader then parses, so a path swapped
after the check cannot slip in unverified bytes.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Mapping
from pathlib import Path
from typing import IO

from backend.loader.errors import ModelLoadError

ExpectedDigest = str | Mapping[str, str]

_HEX_DIGEST = re.compile(r"[0-9a-f]{64}")
_CHUNK_BYTES = 1 << 20


def sha256_file(file: IO[bytes]) -> str:
    """The SHA-256 of an open file, streamed in chunks; leaves the file at its start."""
    file.seek(0)
    digest = hashlib.sha256()
    while chunk := file.read(_CHUNK_BYTES):
        digest.update(chunk)
    file.seek(0)
    return digest.hexdigest()


def manifest_digest(digests: Mapping[str, str]) -> str:
    """The SHA-256 of the ``sha256sum``-style manifest of ``digests`` (name -> hex), sorted by name."""
    manifest = "".join(f"{digests[name]}  {name}\n" for name in sorted(digests))
    return hashlib.sha256(manifest.encode("utf-8")).hexdigest()


def verify_files(
    files: Mapping[str, IO[bytes]], expected: ExpectedDigest, root: Path, *, single: bool
) -> None:
    """Raise ``ModelLoadError`` unless ``files`` (relative name -> open file) hash to ``expected``.

    ``single`` says the model is one file (GGUF) whose own digest a string names; otherwise a string
    names the directory's manifest digest.
    """
    if isinstance(expected, str):
        want = _normalized(expected, root)
        if single:
            ((name, file),) = files.items()
            _compare(sha256_file(file), want, root)
            return
        actual = manifest_digest({name: sha256_file(file) for name, file in files.items()})
        _compare(actual, want, root, what="manifest of " + ", ".join(sorted(files)))
        return
    unknown = sorted(set(expected) - set(files))
    if unknown:
        raise ModelLoadError(f"expected_sha256 names files the model does not use: {unknown}", path=root)
    unpinned = sorted(set(files) - set(expected))
    if unpinned:
        raise ModelLoadError(f"expected_sha256 gives no digest for {unpinned}", path=root)
    for name, file in sorted(files.items()):
        _compare(sha256_file(file), _normalized(expected[name], root), root / name if not single else root)


def directory_digest(files: Mapping[str, IO[bytes]]) -> str:
    """The single digest that pins these files of a model directory (see the module docstring)."""
    return manifest_digest({name: sha256_file(file) for name, file in files.items()})


def _normalized(digest: str, path: Path) -> str:
    value = digest.strip().lower()
    if not _HEX_DIGEST.fullmatch(value):
        raise ModelLoadError(f"expected_sha256 {digest!r} is not a 64-digit hex SHA-256 digest", path=path)
    return value


def _compare(actual: str, expected: str, path: Path, *, what: str = "file") -> None:
    if not hmac.compare_digest(actual, expected):
        raise ModelLoadError(
            f"SHA-256 mismatch for the {what}: expected {expected}, found {actual}; refusing to load",
            path=path,
        )
