"""The log directory as the writer's I/O thread sees it: the lock, the open segment, and the chain
from one segment to the next through rotation, checkpoints and retention. All calls block.
"""

from __future__ import annotations

import fcntl
import logging
import os
import time
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey

from gateway.audit.format import GENESIS, checkpoints_path, list_segments, records_path
from gateway.audit.retention import expired_segments, segment_created
from gateway.audit.segment import SegmentFile, fsync_directory, recover_segment

logger = logging.getLogger("gateway.audit")

LOCK_NAME = ".lock"  # one writer per directory: a second gateway process must use its own


class LogFiles:
    def __init__(self, directory: Path, auditor: X25519PublicKey, signing: Ed25519PrivateKey) -> None:
        self.directory = directory
        self._auditor = auditor
        self._signing = signing
        self.segment: SegmentFile | None = None
        self.next = (1, GENESIS)  # index and prev hash of the next segment to open
        self.last_checkpoint = 0.0  # monotonic
        self.counts = {"opened": 0, "checkpoints": 0, "removed": 0}
        self._log_id = ""
        self._first = 1  # the oldest segment kept, stated in every checkpoint
        self._created: dict[int, float] = {}
        self._lock_fd = -1

    def open(self) -> None:
        """Lock the directory, repair the newest segment after a crash, and open a fresh segment."""
        directory = self.directory
        directory.mkdir(parents=True, exist_ok=True)
        directory.chmod(0o700)
        self._lock_fd = os.open(directory / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.release()
            raise ValueError("another process is writing to this directory") from None
        indexes = list_segments(directory)
        self._created = {index: segment_created(directory, index) for index in indexes}
        self._first = indexes[0] if indexes else 1
        if indexes:
            recovered = recover_segment(directory, indexes[-1], self._signing, first=self._first)
            self._log_id = recovered.log_id
            self.next = (recovered.index + 1, recovered.last_hash)
        else:
            self._log_id = os.urandom(16).hex()
        self._new_segment()

    def release(self) -> None:
        if self._lock_fd >= 0:
            os.close(self._lock_fd)  # closing the descriptor releases the lock
            self._lock_fd = -1

    def _new_segment(self) -> SegmentFile:
        index, prev = self.next
        segment = SegmentFile.create(
            self.directory,
            log_id=self._log_id,
            index=index,
            prev=prev,
            auditor_public=self._auditor,
            key=self._signing,
        )
        self.segment = segment
        self._created[index] = segment.header.created
        self.counts["opened"] += 1
        self.checkpoint()  # signs the header at once
        return segment

    def rotate(self) -> SegmentFile:
        """Close the open segment (final checkpoint) and open the next; the chain carries over."""
        old = self.segment
        if old is not None:
            self.close_segment()
            self.segment = None
            self.next = (old.index + 1, old.last_hash)
            logger.info("audit segment closed", extra={"segment": old.index, "last_hash": old.last_hash})
        return self._new_segment()

    def close_segment(self) -> None:
        segment = self.segment
        if segment is None:
            return
        segment.checkpoint(first=self._first, final=True)
        self.counts["checkpoints"] += 1
        segment.close()

    def checkpoint(self) -> None:
        if self.segment is not None:
            self.segment.checkpoint(first=self._first)
            self.counts["checkpoints"] += 1
            self.last_checkpoint = time.monotonic()

    def apply_retention(self, days: float) -> None:
        """Delete closed segments whose every record is older than ``days``."""
        if self.segment is None:
            return
        doomed = expired_segments(self._created, self.segment.index, time.time() - days * 86_400)
        if not doomed:
            return
        self._first = doomed[-1] + 1
        self.checkpoint()  # the log states its new first segment before anything goes
        for index in doomed:
            for path in (records_path(self.directory, index), checkpoints_path(self.directory, index)):
                path.unlink(missing_ok=True)
            del self._created[index]
            self.counts["removed"] += 1
        fsync_directory(self.directory)
        logger.info("audit segments removed by retention", extra={"segments": doomed})
