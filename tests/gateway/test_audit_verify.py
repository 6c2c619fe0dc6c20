"""``verify_log`` finds every kind of tampering and names the first bad segment and sequence number.

The base log has three segments of eight records each (one writer session per segment); the last
segment also has a checkpoint at seq 4 from the periodic timer. Each case copies it, tampers with
the copy as an attacker with file access would (some with the auditors' key, to re-encrypt), and
checks where and what ``verify`` reports.
"""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway.audit import AuditWriter
from gateway.audit.crypto import SegmentOpener, _position
from gateway.audit.format import (
    Checkpoint,
    RecordLine,
    SegmentHeader,
    checkpoints_path,
    encode_record_line,
    line_hash,
    records_path,
)
from gateway.audit.keys import AuditKeyPaths
from tests.gateway.test_audit_support import (
    auditor_key,
    make_keys,
    sample_record,
    settings_for,
    verify,
    write_log,
)

PER_SEGMENT = 8


async def _session_with_mid_checkpoint(log_dir: Path, keys: AuditKeyPaths, start: int) -> None:
    writer = AuditWriter(settings_for(log_dir, keys, checkpoint_interval_s=0.05))
    await writer.start()
    for number in range(start, start + PER_SEGMENT // 2):
        await writer.write(sample_record(number))
    before = writer.stats.checkpoints
    await asyncio.sleep(0.2)  # several checkpoint intervals
    assert writer.stats.checkpoints == before + 1
    await asyncio.gather(
        *(writer.write(sample_record(n)) for n in range(start + PER_SEGMENT // 2, start + PER_SEGMENT))
    )
    await writer.close()


def build_log(log_dir: Path, keys: AuditKeyPaths, segments: int) -> None:
    for session in range(segments - 1):
        write_log(settings_for(log_dir, keys), PER_SEGMENT, start=session * PER_SEGMENT)
    asyncio.run(_session_with_mid_checkpoint(log_dir, keys, (segments - 1) * PER_SEGMENT))


@dataclass(frozen=True)
class Logs:
    keys: AuditKeyPaths
    base: Path
    other: Path  # another log, same keys
    foreign: Path  # another log with other keys


@pytest.fixture(scope="module")
def logs(tmp_path_factory: pytest.TempPathFactory) -> Logs:
    root = tmp_path_factory.mktemp("audit-verify")
    keys, foreign_keys = make_keys(root / "keys"), make_keys(root / "foreign-keys")
    build_log(root / "base", keys, 3)
    build_log(root / "other", keys, 4)
    build_log(root / "foreign", foreign_keys, 3)
    return Logs(keys, root / "base", root / "other", root / "foreign")


def lines_of(path: Path) -> list[bytes]:
    return path.read_bytes().split(b"\n")[:-1]


def save_lines(path: Path, lines: list[bytes]) -> None:
    path.write_bytes(b"".join(line + b"\n" for line in lines))


def edit_records(log: Path, index: int, change: Callable[[list[bytes]], None]) -> None:
    lines = lines_of(records_path(log, index))
    change(lines)
    save_lines(records_path(log, index), lines)


def set_ct_char(line: bytes, char: bytes) -> bytes:
    at = line.index(b'"ct":"') + 12
    if line[at : at + 1] == char:
        char = b"B"
    return line[:at] + char + line[at + 1 :]


def reseal(logs: Logs, log: Path, index: int, seq: int, change: Callable[[dict[str, Any]], None]) -> bytes:
    """What someone holding the auditors' key can do: decrypt a record, change it, encrypt it again."""
    lines = lines_of(records_path(log, index))
    header = SegmentHeader.decode(lines[0])
    opener = SegmentOpener(header.segment_id, header.ephemeral_public, auditor_key(logs.keys))
    source = RecordLine.decode(lines[min(seq, len(lines) - 1)])
    data = json.loads(opener.open(source.seq, source.ciphertext))
    change(data)
    nonce, aad = _position(header.segment_id, seq)
    ciphertext = opener._aead.encrypt(nonce, json.dumps(data).encode(), aad)
    prev = source.prev if seq < len(lines) else line_hash(lines[-1])
    return encode_record_line(seq, prev, ciphertext)


def copy_segment(source: Path, source_index: int, target: Path, target_index: int) -> None:
    shutil.copyfile(records_path(source, source_index), records_path(target, target_index))
    shutil.copyfile(checkpoints_path(source, source_index), checkpoints_path(target, target_index))


def append_checkpoint(
    logs: Logs, log: Path, index: int, key: Ed25519PrivateKey | None, **changes: Any
) -> None:
    last = Checkpoint.decode(lines_of(checkpoints_path(log, index))[-1])
    fields = {name: getattr(last, name) for name in Checkpoint.__dataclass_fields__} | changes
    forged = Checkpoint(**fields)
    if key is not None:
        forged = forged.signed(key)
    with checkpoints_path(log, index).open("ab") as handle:
        handle.write(forged.encode() + b"\n")


def _subject(data: dict[str, Any]) -> None:
    data["subject"] = "someone-else"


def _swap(lines: list[bytes]) -> None:
    lines[3], lines[4] = lines[4], lines[3]


def _edit_header(lines: list[bytes]) -> None:
    header = json.loads(lines[0])
    header["created"] = header["created"] - 3600
    lines[0] = json.dumps(header, separators=(",", ":"), sort_keys=True).encode()


Tamper = Callable[[Logs, Path], object]

CASES: list[tuple[str, Tamper, int, int | None, str]] = [
    (
        "flipped ciphertext character",
        lambda src, d: edit_records(d, 2, lambda x: x.__setitem__(3, set_ct_char(x[3], b"A"))),
        2, 3, "record changed",
    ),
    (
        "ciphertext byte overwritten with junk",
        lambda src, d: edit_records(d, 2, lambda x: x.__setitem__(3, set_ct_char(x[3], b"!"))),
        2, 3, "record is damaged",
    ),
    (
        "field edited and re-encrypted with the auditors' key",
        lambda src, d: edit_records(d, 2, lambda x: x.__setitem__(3, reseal(src, d, 2, 3, _subject))),
        2, 3, "record changed",
    ),
    ("header field edited", lambda src, d: edit_records(d, 2, _edit_header), 2, 0, "segment header changed"),
    ("record deleted", lambda src, d: edit_records(d, 2, lambda x: x.__delitem__(3)), 2, 3, "record deleted"),
    ("two records swapped", lambda src, d: edit_records(d, 2, _swap), 2, 3, "out of order"),
    (
        "record duplicated",
        lambda src, d: edit_records(d, 1, lambda x: x.insert(5, x[4])),
        1, 5, "appears again",
    ),
    (
        "closed segment cut past its final checkpoint",
        lambda src, d: edit_records(d, 2, lambda x: x.__delitem__(slice(-2, None))),
        2, 7, "truncated",
    ),
    (
        "newest segment cut past its last checkpoint",
        lambda src, d: edit_records(d, 3, lambda x: x.__delitem__(slice(-2, None))),
        3, 7, "truncated",
    ),
    (
        "record appended to a closed segment (valid chain, auditors' key)",
        lambda src, d: edit_records(d, 2, lambda x: x.append(reseal(src, d, 2, PER_SEGMENT + 1, _subject))),
        2, 9, "added after the segment was closed",
    ),
    (
        "segment replaced by another log's",
        lambda src, d: copy_segment(src.other, 2, d, 2),
        2, 0, "another log",
    ),
    (
        "segment from another log spliced onto the end",
        lambda src, d: copy_segment(src.other, 4, d, 4),
        4, 0, "another log",
    ),
    (
        "segment from another log renamed into the sequence",
        lambda src, d: copy_segment(src.other, 1, d, 4),
        4, 0, "the header says segment 1",
    ),
    (
        "segment from a gateway with other keys",
        lambda src, d: copy_segment(src.foreign, 2, d, 2),
        2, 0, "another signing key",
    ),
    ("middle segment deleted", lambda src, d: records_path(d, 2).unlink(), 2, None, "segment missing"),
    ("oldest segment deleted", lambda src, d: records_path(d, 1).unlink(), 1, None, "segment missing"),
    (
        "checkpoints of a closed segment emptied",
        lambda src, d: checkpoints_path(d, 2).write_bytes(b""),
        2, None, "no valid checkpoint",
    ),
    (
        "checkpoint edited (claims a later seq)",
        lambda src, d: append_checkpoint(src, d, 2, None, seq=20),
        2, 20, "invalid signature",
    ),
    (
        "checkpoint forged with another key",
        lambda src, d: append_checkpoint(src, d, 3, Ed25519PrivateKey.generate(), seq=6),
        3, 6, "invalid signature",
    ),
    (
        "checkpoint of another segment copied in",
        lambda src, d: shutil.copyfile(checkpoints_path(d, 1), checkpoints_path(d, 2)),
        2, 0, "belongs to another segment",
    ),
]  # fmt: skip


def test_untouched_log_verifies(logs: Logs) -> None:
    report = verify(logs.base, logs.keys)
    assert report.ok, report.problem
    assert (report.segments, report.records) == (3, 3 * PER_SEGMENT)
    assert report.checkpoints >= 7  # seq 0 and final in each segment, plus the timer's
    assert report.notes == []


@pytest.mark.parametrize(("name", "tamper", "segment", "seq", "what"), CASES, ids=[c[0] for c in CASES])
def test_tampering_is_detected_and_located(
    logs: Logs, tmp_path: Path, name: str, tamper: Tamper, segment: int, seq: int | None, what: str
) -> None:
    log = tmp_path / "log"
    shutil.copytree(logs.base, log)
    tamper(logs, log)
    report = verify(log, logs.keys)
    assert report.problem is not None, f"{name}: not detected"
    assert (report.problem.segment, report.problem.seq) == (segment, seq), str(report.problem)
    assert what in report.problem.what


def _crashed_copy(logs: Logs, log: Path) -> None:
    """The base log as a crash right after seq 8 would leave it: seq 5 to 8 were never signed."""
    shutil.copytree(logs.base, log)
    checkpoints = [c for c in lines_of(checkpoints_path(log, 3)) if json.loads(c)["seq"] <= 4]
    assert json.loads(checkpoints[-1])["seq"] == 4
    save_lines(checkpoints_path(log, 3), checkpoints)


def test_unsigned_tail_of_an_open_segment_is_a_note_not_an_error(logs: Logs, tmp_path: Path) -> None:
    # Records after the last checkpoint may be lost in a crash; losing them is not tampering.
    log = tmp_path / "log"
    _crashed_copy(logs, log)
    edit_records(log, 3, lambda lines: lines.__delitem__(slice(-2, None)))
    with records_path(log, 3).open("ab") as handle:
        handle.write(b'{"seq":7,"prev":"00')  # a torn write
    report = verify(log, logs.keys)
    assert report.ok, report.problem
    assert any("2 record(s) after the last checkpoint" in note for note in report.notes)
    assert any("torn last record at seq 7" in note for note in report.notes)


def test_open_segment_cut_past_its_last_checkpoint_is_detected(logs: Logs, tmp_path: Path) -> None:
    log = tmp_path / "log"
    _crashed_copy(logs, log)
    edit_records(log, 3, lambda lines: lines.__delitem__(slice(4, None)))  # keeps seq 1..3; signed: 4
    report = verify(log, logs.keys)
    assert report.problem is not None
    assert (report.problem.segment, report.problem.seq) == (3, 4)
    assert "truncated" in report.problem.what


def test_a_log_signed_by_another_gateway_key_fails(logs: Logs) -> None:
    report = verify(logs.foreign, logs.keys)
    assert report.problem is not None
    assert (report.problem.segment, report.problem.seq) == (1, 0)
    assert "another signing key" in report.problem.what
