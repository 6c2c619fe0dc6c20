"""Reading the log as an auditor: decrypt with the auditors' private key, filter, and count.

``read_records`` does not check the chain or the signatures (``verify_log`` does); it does refuse a
record that does not decrypt, naming where it is, since AES-GCM authenticates every record together
with its position. ``log_stats`` needs no key: it counts what the plaintext structure shows.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from gateway.audit.crypto import DecryptError, SegmentOpener, fingerprint
from gateway.audit.format import (
    Checkpoint,
    FormatError,
    RecordLine,
    SegmentHeader,
    checkpoints_path,
    list_segments,
    records_path,
    split_lines,
)
from gateway.audit.record import decode_record
from gateway.audit.retention import segment_created

Progress = Callable[[int, int, int], None]  # (segments done, segments in all, records so far)


class ReadError(Exception):
    """A segment cannot be read with the given key; the message names the segment and why."""


@dataclass(frozen=True, slots=True)
class RecordFilter:
    since: float | None = None  # unix seconds, inclusive
    until: float | None = None  # unix seconds, exclusive
    subject: str | None = None
    tenant: str | None = None
    decision: str | None = None
    model: str | None = None

    def matches(self, record: dict[str, Any]) -> bool:
        when = record["time"]
        return (
            (self.since is None or when >= self.since)
            and (self.until is None or when < self.until)
            and (self.subject is None or record["subject"] == self.subject)
            and (self.tenant is None or record["tenant"] == self.tenant)
            and (self.decision is None or record["decision"] == self.decision)
            and (self.model is None or record["model"] == self.model)
        )


def read_records(
    directory: Path,
    key: X25519PrivateKey,
    where: RecordFilter | None = None,
    progress: Progress | None = None,
) -> Iterator[dict[str, Any]]:
    """Decrypted records, oldest first, each with its ``segment`` and ``seq`` added."""
    where = where or RecordFilter()
    indexes = list_segments(directory)
    mine = fingerprint(key.public_key().public_bytes_raw())
    seen = 0
    for position, index in enumerate(indexes):
        # Every record of segment k was stamped before segment k + 1 was created, so a segment followed
        # by one created before ``since`` holds nothing to show. (No such bound holds for ``until``:
        # a record stamped just before a rotation lands in the new segment.)
        following = indexes[position + 1] if position + 1 < len(indexes) else None
        if where.since is not None and following and segment_created(directory, following) < where.since:
            continue
        lines, _torn = split_lines(records_path(directory, index).read_bytes())
        header = _header(index, lines)
        if header.auditor != mine:
            raise ReadError(
                f"segment {index} is encrypted for auditor key {header.auditor}, not for the given key {mine}"
            )
        opener = SegmentOpener(header.segment_id, header.ephemeral_public, key)
        for number, line in enumerate(lines[1:], start=1):
            try:
                record_line = RecordLine.decode(line)
                record = decode_record(opener.open(record_line.seq, record_line.ciphertext))
            except (FormatError, DecryptError, ValueError):
                raise ReadError(
                    f"segment {index} seq {number}: the record does not decrypt "
                    "(changed, moved or damaged; run audit verify)"
                ) from None
            seen += 1
            if where.matches(record):
                yield {"segment": index, "seq": record_line.seq, **record}
        if progress is not None:
            progress(position + 1, len(indexes), seen)


def _header(index: int, lines: list[bytes]) -> SegmentHeader:
    try:
        return SegmentHeader.decode(lines[0] if lines else b"")
    except FormatError:
        raise ReadError(f"segment {index}: the header is damaged (run audit verify)") from None


@dataclass(slots=True)
class SegmentStats:
    index: int
    created: float
    records: int
    bytes: int
    checkpoints: int
    closed: bool
    unsigned: int  # records after the last checkpoint


@dataclass(slots=True)
class LogStats:
    segments: list[SegmentStats] = field(default_factory=list)

    @property
    def records(self) -> int:
        return sum(s.records for s in self.segments)

    @property
    def bytes(self) -> int:
        return sum(s.bytes for s in self.segments)


def log_stats(directory: Path, progress: Progress | None = None) -> LogStats:
    """Per segment: creation time, records, size, checkpoints, whether it was closed (no key needed)."""
    stats = LogStats()
    indexes = list_segments(directory)
    for position, index in enumerate(indexes):
        data = records_path(directory, index).read_bytes()
        lines, _torn = split_lines(data)
        header = _header(index, lines)
        try:
            ckpt_lines, _ = split_lines(checkpoints_path(directory, index).read_bytes())
        except FileNotFoundError:
            ckpt_lines = []
        checkpoints = []
        for line in ckpt_lines:
            try:
                checkpoints.append(Checkpoint.decode(line))
            except FormatError:
                continue
        records = max(len(lines) - 1, 0)
        signed = max((c.seq for c in checkpoints), default=0)
        stats.segments.append(
            SegmentStats(
                index=index,
                created=header.created,
                records=records,
                bytes=len(data),
                checkpoints=len(checkpoints),
                closed=any(c.final for c in checkpoints),
                unsigned=max(records - signed, 0),
            )
        )
        if progress is not None:
            progress(position + 1, len(indexes), stats.records)
    return stats
