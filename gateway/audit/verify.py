"""``audit verify``: check a log directory with the gateway's signing public key alone.

Walks the segments oldest first and stops at the first problem, naming the segment, the sequence
number and what is wrong: a changed record (flipped ciphertext byte, edited field), a deleted,
reordered or duplicated record, a log cut past a signed checkpoint, a segment replaced, renamed,
spliced in from another log or deleted, a forged checkpoint. Records after the last checkpoint of
the newest segment are not signed yet (the writer is running, or stopped abruptly); they are
reported as a note, as is a torn last line that the gateway cuts at its next start.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from gateway.audit.format import (
    GENESIS,
    Checkpoint,
    FormatError,
    RecordLine,
    SegmentHeader,
    checkpoints_path,
    line_hash,
    list_segments,
    records_path,
    signer_fingerprint,
    split_lines,
)

Progress = Callable[[int, int, int], None]  # (segments done, segments in all, records so far)


@dataclass(frozen=True, slots=True)
class Problem:
    segment: int
    seq: int | None
    what: str

    def __str__(self) -> str:
        where = f"segment {self.segment}" + (f" seq {self.seq}" if self.seq is not None else "")
        return f"{where}: {self.what}"


@dataclass(slots=True)
class VerifyReport:
    segments: int = 0
    records: int = 0
    checkpoints: int = 0
    problem: Problem | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.problem is None


class _Bad(Exception):
    def __init__(self, segment: int, seq: int | None, what: str) -> None:
        super().__init__(what)
        self.problem = Problem(segment, seq, what)


@dataclass(frozen=True, slots=True)
class _Expect:
    key: Ed25519PublicKey
    signer: str
    log_id: str | None  # None for the oldest segment present
    prev: str | None  # None when the previous segment was removed by retention
    last: bool  # the newest segment: it may still be open


def verify_log(directory: Path, key: Ed25519PublicKey, progress: Progress | None = None) -> VerifyReport:
    report = VerifyReport()
    try:
        _verify(directory, key, report, progress)
    except _Bad as bad:
        report.problem = bad.problem
    return report


def _verify(directory: Path, key: Ed25519PublicKey, report: VerifyReport, progress: Progress | None) -> None:
    try:
        indexes = list_segments(directory)
    except OSError as exc:
        raise _Bad(0, None, f"cannot list {directory} ({exc.strerror})") from None
    if not indexes:
        raise _Bad(0, None, f"no audit segments in {directory}")
    signer = signer_fingerprint(key)
    first = _stated_first(directory, indexes, key)
    if indexes[0] > first:
        what = f"segment missing: the log keeps segments from {first} on, the oldest here is {indexes[0]}"
        raise _Bad(first, None, what)
    if indexes[0] > 1:
        report.notes.append(f"the log starts at segment {indexes[0]}; older ones were removed by retention")
    log_id: str | None = None
    prev: str | None = None
    for position, index in enumerate(indexes):
        if position and index != indexes[position - 1] + 1:
            raise _Bad(indexes[position - 1] + 1, None, "segment missing (deleted from the middle)")
        expect = _Expect(key, signer, log_id, prev, last=index == indexes[-1])
        header, prev, records, checkpoints = _verify_segment(directory, index, expect, report)
        log_id = header.log_id
        report.segments += 1
        report.records += records
        report.checkpoints += checkpoints
        if progress is not None:
            progress(position + 1, len(indexes), report.records)


def _stated_first(directory: Path, indexes: list[int], key: Ed25519PublicKey) -> int:
    """The oldest segment the log said it keeps, in its newest signed checkpoint."""
    for index in reversed(indexes):
        firsts = [c.first for c in _checkpoints(directory, index)[0] if c and c.signature_valid(key)]
        if firsts:
            return max(firsts)
    return indexes[0]


def _checkpoints(directory: Path, index: int) -> tuple[list[Checkpoint | None], bytes]:
    try:
        lines, torn = split_lines(checkpoints_path(directory, index).read_bytes())
    except FileNotFoundError:
        return [], b""
    parsed: list[Checkpoint | None] = []
    for line in lines:
        try:
            parsed.append(Checkpoint.decode(line))
        except FormatError:
            parsed.append(None)
    return parsed, torn


def _verify_segment(
    directory: Path, index: int, expect: _Expect, report: VerifyReport
) -> tuple[SegmentHeader, str, int, int]:
    try:
        lines, torn = split_lines(records_path(directory, index).read_bytes())
    except OSError as exc:
        raise _Bad(index, None, f"cannot read the segment ({exc.strerror})") from None
    header = _check_header(index, lines, expect)
    checkpoints = _check_signatures(directory, index, header, expect, report)
    hashes = _check_records(index, lines, header)
    count = len(hashes) - 1
    signed = max((c.seq for c in checkpoints), default=-1)
    for checkpoint in sorted(checkpoints, key=lambda c: c.seq):
        if checkpoint.seq > count:
            what = f"records missing from here on: a checkpoint signed seq {checkpoint.seq} (log truncated)"
            raise _Bad(index, count + 1, what)
        if checkpoint.hash != hashes[checkpoint.seq]:
            what = "record differs from the signed checkpoint (changed after it was signed)"
            raise _Bad(index, checkpoint.seq, what if checkpoint.seq else "segment header changed")
        if checkpoint.final and count > checkpoint.seq:
            raise _Bad(index, checkpoint.seq + 1, "record added after the segment was closed")
    if not expect.last:
        if not checkpoints:
            raise _Bad(index, None, "no valid checkpoint (checkpoints file missing, emptied or replaced)")
        if torn:
            raise _Bad(index, count + 1, "damaged bytes after the last record of a closed segment")
    else:
        unsigned = count - max(signed, 0)
        if unsigned > 0:
            report.notes.append(
                f"segment {index}: {unsigned} record(s) after the last checkpoint are not "
                "signed yet (the writer is running, or stopped abruptly)"
            )
        if torn:
            report.notes.append(f"segment {index}: torn last record at seq {count + 1} (cut at next start)")
    return header, hashes[-1], count, len(checkpoints)


def _check_header(index: int, lines: list[bytes], expect: _Expect) -> SegmentHeader:
    if not lines:
        raise _Bad(index, 0, "segment header missing (file empty or cut)")
    try:
        header = SegmentHeader.decode(lines[0])
    except FormatError:
        raise _Bad(index, 0, "segment header is damaged") from None
    if header.index != index:
        raise _Bad(index, 0, f"the header says segment {header.index} (file renamed or copied in)")
    if header.signer != expect.signer:
        raise _Bad(index, 0, f"segment was written by a gateway with another signing key ({header.signer})")
    if expect.log_id is not None and header.log_id != expect.log_id:
        raise _Bad(index, 0, "segment belongs to another log (replaced or spliced in)")
    if expect.prev is not None and header.prev != expect.prev:
        what = f"does not continue from segment {index - 1}'s last record (replaced or spliced in)"
        raise _Bad(index, 0, what)
    if index == 1 and header.prev != GENESIS:
        raise _Bad(index, 0, "the first segment continues another log (spliced in)")
    return header


def _check_signatures(
    directory: Path, index: int, header: SegmentHeader, expect: _Expect, report: VerifyReport
) -> list[Checkpoint]:
    parsed, torn = _checkpoints(directory, index)
    valid: list[Checkpoint] = []
    for number, checkpoint in enumerate(parsed, start=1):
        if checkpoint is None:
            raise _Bad(index, None, f"checkpoint {number} is damaged")
        if checkpoint.signer != expect.signer:
            what = f"checkpoint {number} is signed by another key ({checkpoint.signer})"
            raise _Bad(index, checkpoint.seq, what)
        if not checkpoint.signature_valid(expect.key):
            what = f"checkpoint {number} has an invalid signature (forged or edited)"
            raise _Bad(index, checkpoint.seq, what)
        same = (checkpoint.log, checkpoint.index, checkpoint.segment)
        if same != (header.log_id, index, header.segment_id.hex()):
            raise _Bad(index, checkpoint.seq, f"checkpoint {number} belongs to another segment (copied in)")
        valid.append(checkpoint)
    if torn:
        if not expect.last:
            raise _Bad(index, None, "damaged bytes after the last checkpoint of a closed segment")
        report.notes.append(f"segment {index}: torn last checkpoint line (cut at the next start)")
    return valid


def _check_records(index: int, lines: list[bytes], header: SegmentHeader) -> list[str]:
    """Hashes of line 0 (the header) to n, after checking sequence numbers and links."""
    decoded: list[RecordLine | None] = []
    for line in lines[1:]:
        try:
            decoded.append(RecordLine.decode(line))
        except FormatError:
            decoded.append(None)
    present = {record.seq for record in decoded if record is not None}
    hashes = [line_hash(lines[0])]
    for seq, record in enumerate(decoded, start=1):
        if record is None:
            raise _Bad(index, seq, "record is damaged (not a valid record line)")
        if record.seq != seq:
            if record.seq > seq and seq in present:
                what = f"records out of order: seq {record.seq} stands where seq {seq} belongs"
            elif record.seq > seq:
                what = f"record deleted: the line after seq {seq - 1} is seq {record.seq}"
            else:
                what = f"seq {record.seq} appears again where seq {seq} belongs (duplicated or inserted)"
            raise _Bad(index, seq, what)
        if record.prev != hashes[-1]:
            if seq == 1:
                raise _Bad(index, 0, "segment header changed (seq 1 links to another header)")
            raise _Bad(index, seq - 1, f"record changed: its hash no longer matches the link in seq {seq}")
        hashes.append(line_hash(lines[seq]))
    return hashes
