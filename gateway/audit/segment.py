"""The open segment: blocking appends with fsync, checkpoints, and repairing the tail after a crash.

Only the writer's I/O thread calls ``commit``/``checkpoint``/``close``; ``prepare`` (encryption and
chaining, pure CPU) runs on the event loop. A failed write is cut back to the last durable size and
leaves the segment ``broken``: its data key has already sealed those sequence numbers, so the writer
moves to a fresh segment (fresh key) rather than ever reuse a nonce.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey

from gateway.audit.crypto import SEGMENT_ID_BYTES, SegmentSealer, fingerprint
from gateway.audit.format import (
    Checkpoint,
    FormatError,
    RecordLine,
    SegmentHeader,
    checkpoints_path,
    encode_record_line,
    line_hash,
    records_path,
    signer_fingerprint,
    split_lines,
)

logger = logging.getLogger("gateway.audit")

_sync = getattr(os, "fdatasync", os.fsync)  # appends need the data and the size, not the times


def fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


@dataclass(slots=True)
class Prepared:
    """Encrypted, chained lines ready for one write, and the chain state once they are durable."""

    data: bytes
    seq: int
    last_hash: str


class SegmentFile:
    def __init__(self, directory: Path, header: SegmentHeader, sealer: SegmentSealer, key: Ed25519PrivateKey):
        self.directory = directory
        self.header = header
        self._sealer = sealer
        self._key = key
        self._fd = os.open(records_path(directory, header.index), os.O_WRONLY | os.O_APPEND)
        self._ckpt_fd = os.open(checkpoints_path(directory, header.index), os.O_WRONLY | os.O_APPEND)
        self.size = os.fstat(self._fd).st_size  # durable size
        self._ckpt_size = os.fstat(self._ckpt_fd).st_size
        self.seq = 0  # last durable sequence number
        self.last_hash = line_hash(header.encode())
        self.checkpointed_seq = -1
        self.opened = time.monotonic()
        self.broken = False

    @property
    def index(self) -> int:
        return self.header.index

    @classmethod
    def create(
        cls,
        directory: Path,
        *,
        log_id: str,
        index: int,
        prev: str,
        auditor_public: X25519PublicKey,
        key: Ed25519PrivateKey,
    ) -> SegmentFile:
        """A new segment with a fresh data key; its header appears atomically (staged, then renamed)."""
        segment_id = os.urandom(SEGMENT_ID_BYTES)
        sealer = SegmentSealer(segment_id, auditor_public)
        header = SegmentHeader(
            log_id=log_id,
            index=index,
            segment_id=segment_id,
            created=round(time.time(), 6),
            prev=prev,
            ephemeral_public=sealer.ephemeral_public,
            auditor=fingerprint(auditor_public.public_bytes_raw()),
            signer=signer_fingerprint(key),
        )
        target, ckpt = records_path(directory, index), checkpoints_path(directory, index)
        if target.exists() or ckpt.exists():
            raise FileExistsError(f"audit segment {index} exists already")
        staging = directory / f".{target.name}.tmp"
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW
        try:
            fd = os.open(staging, flags, 0o600)
            try:
                _write_all(fd, header.encode() + b"\n")
                os.fsync(fd)
            finally:
                os.close(fd)
            os.close(os.open(ckpt, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600))
            staging.rename(target)
            fsync_directory(directory)
        except OSError:
            # None of these existed before: leave nothing half-made, so the next attempt starts clean.
            for path in (staging, ckpt, target):
                path.unlink(missing_ok=True)
            raise
        return cls(directory, header, sealer, key)

    @property
    def records(self) -> int:
        return self.seq

    def prepare(self, plaintexts: list[bytes]) -> Prepared:
        """Encrypt and chain a group of records (CPU only; nothing changes until ``commit``)."""
        seq, prev = self.seq, self.last_hash
        seal = self._sealer.seal
        lines: list[bytes] = []
        for plaintext in plaintexts:
            seq += 1
            line = encode_record_line(seq, prev, seal(seq, plaintext))
            prev = line_hash(line)
            lines.append(line)
        lines.append(b"")
        return Prepared(b"\n".join(lines), seq, prev)

    def commit(self, prepared: Prepared) -> None:
        """Append and fsync; on failure cut back to the durable size, mark broken, and re-raise."""
        if self.broken:
            raise OSError("audit segment is broken after an earlier write failure")
        try:
            _write_all(self._fd, prepared.data)
            _sync(self._fd)
        except OSError:
            self.broken = True
            self._cut_back()
            raise
        self.size += len(prepared.data)
        self.seq, self.last_hash = prepared.seq, prepared.last_hash

    def _cut_back(self) -> None:
        try:
            os.ftruncate(self._fd, self.size)
            _sync(self._fd)
        except OSError:
            logger.warning("audit segment could not be cut back; its tail is repaired at the next start")

    def checkpoint(self, *, first: int, final: bool = False) -> None:
        """Sign the durable state. Only durable records are ever covered by a checkpoint."""
        if self.broken:
            self._cut_back()
        checkpoint = Checkpoint(
            log=self.header.log_id,
            index=self.index,
            segment=self.header.segment_id.hex(),
            seq=self.seq,
            hash=self.last_hash,
            time=round(time.time(), 6),
            final=final,
            first=first,
            signer=signer_fingerprint(self._key),
        ).signed(self._key)
        line = checkpoint.encode() + b"\n"
        try:
            _write_all(self._ckpt_fd, line)
            _sync(self._ckpt_fd)
        except OSError:
            try:
                os.ftruncate(self._ckpt_fd, self._ckpt_size)
            except OSError:
                logger.warning("audit checkpoint file could not be cut back")
            raise
        self._ckpt_size += len(line)
        self.checkpointed_seq = self.seq

    def close(self) -> None:
        os.close(self._fd)
        os.close(self._ckpt_fd)


@dataclass(frozen=True, slots=True)
class Recovered:
    """Where the chain stands after repairing the newest segment of a log."""

    log_id: str
    index: int
    seq: int
    last_hash: str


def recover_segment(directory: Path, index: int, key: Ed25519PrivateKey, *, first: int) -> Recovered:
    """Repair the newest segment after a stop: cut a torn or unchained tail past its last checkpoint,
    then close it with a final checkpoint. A segment closed already is left alone, and so is damage
    before the last checkpoint: that is evidence for ``audit verify``, never repaired away."""
    path, ckpt_path = records_path(directory, index), checkpoints_path(directory, index)
    lines, torn = split_lines(path.read_bytes())
    if not lines:
        raise FormatError(f"{path.name}: no segment header; move the file away to start a new log")
    header = SegmentHeader.decode(lines[0])
    public = key.public_key()
    checkpoints = [
        c
        for c in _read_checkpoints(ckpt_path)
        if c.segment == header.segment_id.hex() and c.signature_valid(public)
    ]
    finals = [c for c in checkpoints if c.final]
    if finals:  # closed cleanly: the chain goes on from what was signed, whatever follows it
        last = max(finals, key=lambda c: c.seq)
        return Recovered(header.log_id, index, last.seq, last.hash)
    seq, prev, good_bytes = 0, line_hash(lines[0]), len(lines[0]) + 1
    for line in lines[1:]:
        try:
            record = RecordLine.decode(line)
        except FormatError:
            break
        if record.seq != seq + 1 or record.prev != prev:
            break
        seq, prev, good_bytes = record.seq, line_hash(line), good_bytes + len(line) + 1
    signed = max((c.seq for c in checkpoints), default=0)
    extra = len(lines) - 1 - seq
    if (extra or torn) and seq >= signed:
        with path.open("r+b") as handle:
            handle.truncate(good_bytes)
            os.fsync(handle.fileno())
        logger.warning(
            "audit segment tail cut after a crash",
            extra={"segment": index, "kept_seq": seq, "cut_lines": extra, "cut_bytes": len(torn)},
        )
    elif extra or torn:
        logger.error(
            "audit segment is damaged before its last checkpoint; left as it is for audit verify",
            extra={"segment": index, "valid_seq": seq},
        )
    final = Checkpoint(
        log=header.log_id,
        index=index,
        segment=header.segment_id.hex(),
        seq=seq,
        hash=prev,
        time=round(time.time(), 6),
        final=True,
        first=first,
        signer=signer_fingerprint(key),
    ).signed(key)
    with ckpt_path.open("ab") as handle:
        handle.write(final.encode() + b"\n")
        os.fsync(handle.fileno())
    return Recovered(header.log_id, index, seq, prev)


def _read_checkpoints(path: Path) -> list[Checkpoint]:
    """The checkpoints that parse; a torn last line is cut (it never covered anything durable)."""
    if not path.exists():
        path.touch(mode=0o600)
    data = path.read_bytes()
    lines, torn = split_lines(data)
    if torn:
        with path.open("r+b") as handle:
            handle.truncate(len(data) - len(torn))
            os.fsync(handle.fileno())
    result = []
    for line in lines:
        try:
            result.append(Checkpoint.decode(line))
        except FormatError:
            continue
    return result
