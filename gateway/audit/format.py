"""The on-disk format: segment files of JSON lines, a hash chain, and signed checkpoints. No I/O here.

A segment is two files in the log directory:

``segment-00000001.records``
    Line 0 is the header (log id, segment index and id, creation time, the ephemeral X25519 public key
    the auditors need, fingerprints of the auditors' and the signing key, and ``prev``: the hash of
    the previous segment's last line). Line n (n >= 1) is record ``seq`` n:
    ``{"seq":n,"prev":"<sha256 of line n-1>","ct":"<base64 AES-GCM ciphertext>"}``. The hash of a
    line is SHA-256 over its bytes without the newline, so every line commits to all lines before
    it, across segments.
``segment-00000001.checkpoints``
    Ed25519-signed statements "the line with sequence number ``seq`` of this segment hashes to
    ``hash``", written at open (seq 0, the header), every few seconds, before retention deletes
    anything, and when the segment closes (``final``). ``first`` is the oldest segment the log
    still keeps, so deleting old segments outside retention shows.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from gateway.audit.crypto import CIPHER_SUITE, fingerprint

FORMAT_VERSION = 1
GENESIS = "0" * 64  # ``prev`` of the first segment of a log
RECORDS_SUFFIX = ".records"
CHECKPOINTS_SUFFIX = ".checkpoints"
_SEGMENT_NAME = re.compile(r"^segment-(\d{8})\.records$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_HEADER_KEYS = frozenset(
    {"type", "v", "log", "index", "segment", "created", "prev", "epk", "auditor", "signer", "cipher"}
)
_SIGNING_DOMAIN = b"warden audit checkpoint v1\n"
_canonical = json.JSONEncoder(separators=(",", ":"), sort_keys=True, allow_nan=False).encode


class FormatError(ValueError):
    """A line is not what the format says it should be."""


def line_hash(line: bytes) -> str:
    return hashlib.sha256(line).hexdigest()


def records_path(directory: Path, index: int) -> Path:
    return directory / f"segment-{index:08d}{RECORDS_SUFFIX}"


def checkpoints_path(directory: Path, index: int) -> Path:
    return directory / f"segment-{index:08d}{CHECKPOINTS_SUFFIX}"


def list_segments(directory: Path) -> list[int]:
    """Indexes of the segments in ``directory`` (by their records file), oldest first."""
    found = (_SEGMENT_NAME.match(entry.name) for entry in directory.iterdir())
    return sorted(int(match.group(1)) for match in found if match)


def split_lines(data: bytes) -> tuple[list[bytes], bytes]:
    """Complete lines, and the bytes after the last newline (a torn write when not empty)."""
    parts = data.split(b"\n")
    return parts[:-1], parts[-1]


def _object(line: bytes, keys: frozenset[str]) -> dict[str, Any]:
    try:
        data = json.loads(line)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise FormatError("not valid JSON") from None
    if not isinstance(data, dict) or set(data) != keys:
        raise FormatError("unexpected fields")
    return data


def _hex64(value: Any) -> str:
    if not isinstance(value, str) or not _HEX64.match(value):
        raise FormatError("not a SHA-256 hash")
    return value


def _int(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise FormatError("not a non-negative integer")
    return value


def _b64(value: Any) -> bytes:
    if not isinstance(value, str):
        raise FormatError("not base64")
    try:
        return base64.b64decode(value, validate=True)
    except binascii.Error:
        raise FormatError("not base64") from None


@dataclass(frozen=True, slots=True)
class SegmentHeader:
    log_id: str
    index: int
    segment_id: bytes
    created: float
    prev: str
    ephemeral_public: bytes
    auditor: str  # fingerprint of the auditors' public key the segment is encrypted to
    signer: str  # fingerprint of the gateway key that signs its checkpoints

    def encode(self) -> bytes:
        return _canonical(
            {
                "type": "segment",
                "v": FORMAT_VERSION,
                "log": self.log_id,
                "index": self.index,
                "segment": self.segment_id.hex(),
                "created": self.created,
                "prev": self.prev,
                "epk": base64.b64encode(self.ephemeral_public).decode("ascii"),
                "auditor": self.auditor,
                "signer": self.signer,
                "cipher": CIPHER_SUITE,
            }
        ).encode("ascii")

    @classmethod
    def decode(cls, line: bytes) -> SegmentHeader:
        data = _object(line, _HEADER_KEYS)
        if data["type"] != "segment" or data["v"] != FORMAT_VERSION or data["cipher"] != CIPHER_SUITE:
            raise FormatError("not a segment header of a known version")
        created = data["created"]
        if not isinstance(created, int | float) or isinstance(created, bool):
            raise FormatError("bad creation time")
        try:
            segment_id = bytes.fromhex(data["segment"])
        except (TypeError, ValueError):
            raise FormatError("bad segment id") from None
        epk = _b64(data["epk"])
        if len(segment_id) != 16 or len(epk) != 32:
            raise FormatError("bad segment id or ephemeral key")
        if not all(isinstance(data[k], str) for k in ("log", "auditor", "signer")):
            raise FormatError("bad log id or key fingerprint")
        return cls(
            data["log"], _int(data["index"]), segment_id, float(created), _hex64(data["prev"]), epk,
            data["auditor"], data["signer"],
        )  # fmt: skip


def encode_record_line(seq: int, prev: str, ciphertext: bytes) -> bytes:
    return b'{"seq":%d,"prev":"%s","ct":"%s"}' % (
        seq,
        prev.encode("ascii"),
        binascii.b2a_base64(ciphertext, newline=False),
    )


@dataclass(frozen=True, slots=True)
class RecordLine:
    seq: int
    prev: str
    ciphertext: bytes

    @classmethod
    def decode(cls, line: bytes) -> RecordLine:
        data = _object(line, frozenset({"seq", "prev", "ct"}))
        return cls(_int(data["seq"]), _hex64(data["prev"]), _b64(data["ct"]))


@dataclass(frozen=True, slots=True)
class Checkpoint:
    log: str
    index: int
    segment: str  # segment id in hex
    seq: int
    hash: str
    time: float
    final: bool
    first: int  # the oldest segment index the log keeps
    signer: str  # fingerprint of the signing key
    sig: str = ""  # base64 Ed25519 signature over the other fields

    def payload(self) -> bytes:
        fields = asdict(self)
        del fields["sig"]
        return _SIGNING_DOMAIN + _canonical(fields).encode("ascii")

    def signed(self, key: Ed25519PrivateKey) -> Checkpoint:
        signature = base64.b64encode(key.sign(self.payload())).decode("ascii")
        return Checkpoint(**{**asdict(self), "sig": signature})

    def signature_valid(self, key: Ed25519PublicKey) -> bool:
        try:
            key.verify(_b64(self.sig), self.payload())
        except (InvalidSignature, FormatError):
            return False
        return True

    def encode(self) -> bytes:
        return _canonical(asdict(self)).encode("ascii")

    @classmethod
    def decode(cls, line: bytes) -> Checkpoint:
        keys = frozenset(cls.__dataclass_fields__)
        data = _object(line, keys)
        ok = (
            isinstance(data["log"], str)
            and isinstance(data["segment"], str)
            and isinstance(data["time"], int | float)
            and isinstance(data["final"], bool)
            and isinstance(data["signer"], str)
            and isinstance(data["sig"], str)
        )
        if not ok:
            raise FormatError("bad checkpoint fields")
        return cls(
            data["log"], _int(data["index"]), data["segment"], _int(data["seq"]), _hex64(data["hash"]),
            float(data["time"]), data["final"], _int(data["first"]), data["signer"], data["sig"],
        )  # fmt: skip


def signer_fingerprint(key: Ed25519PrivateKey | Ed25519PublicKey) -> str:
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return fingerprint(public.public_bytes_raw())
