"""``AuditWriter``: group commit of audit records, with rotation, checkpoints and retention.

``await write(record)`` returns once the record is on disk (fsync). Concurrent writes share one
write and one fsync: while a group is being synced the next one gathers. If a group cannot be written
(disk full, permissions, I/O error), every ``write`` in it raises ``AuditUnavailable``; the writer logs
one line when writing starts failing and one when it works again, and counts refused records. It
retries with the next group, on a fresh segment, so it recovers by itself.

All file work happens in one task: the event loop encrypts and chains a group (CPU), a dedicated
thread writes and syncs it (blocking I/O), so file operations never race.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from gateway.audit.keys import KeyFileError, load_auditor_public_key, load_signing_key
from gateway.audit.log_files import LogFiles
from gateway.audit.record import AuditRecord, encode_record
from gateway.audit.settings import AuditSettings
from gateway.errors import ServiceUnavailable

logger = logging.getLogger("gateway.audit")

MAX_GROUP = 4096  # records per write: bounds how long the loop spends encrypting one group
RETENTION_CHECK_S = 60.0
RETRY_S = 1.0  # after a failure, writes are refused without touching the disk until a retry this late

T = TypeVar("T")


class AuditUnavailable(ServiceUnavailable):
    """The record could not be written; the request must fail (503) unless audit ``fail_open`` is set."""

    default_code = "audit_unavailable"
    default_message = "The audit log cannot record requests right now; try again later."


class AuditError(Exception):
    """The audit log cannot start: a key file or the directory is unusable (the message says which)."""


@dataclass(frozen=True, slots=True)
class AuditStats:
    records_written: int
    commits: int  # groups written, one fsync each
    refused_records: int  # write() calls that raised AuditUnavailable
    failures: int  # failed commits, checkpoints or rotations
    available: bool  # False while writing fails
    segment: int  # index of the open segment
    segments_opened: int
    checkpoints: int
    segments_removed: int


class AuditWriter:
    """One per process and log directory (the directory is locked): ``start``, ``write``, ``close``."""

    def __init__(self, settings: AuditSettings) -> None:
        if settings.directory is None or settings.auditor_public_key is None or settings.signing_key is None:
            raise AuditError("the audit log is not configured (audit.directory and keys)")
        self.settings = settings
        self.directory: Path = settings.directory
        self._auditor_key_path = settings.auditor_public_key
        self._signing_key_path = settings.signing_key
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="audit-io")
        self._pending: list[tuple[bytes, asyncio.Future[None]]] = []
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._files: LogFiles | None = None  # set by start()
        self._closing = False
        self._available = True
        self._retry_at = 0.0
        self._next_retention = 0.0
        self._counts = {"records": 0, "commits": 0, "refused": 0, "failures": 0}

    async def start(self) -> None:
        """Load keys, repair the newest segment after a crash, open a fresh segment and start writing."""
        try:
            files = LogFiles(
                self.directory,
                load_auditor_public_key(self._auditor_key_path),
                load_signing_key(self._signing_key_path),
            )
        except KeyFileError as exc:
            raise AuditError(str(exc)) from None
        try:
            await self._io(files.open)
        except (OSError, ValueError) as exc:
            files.release()
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise AuditError(f"audit log {self.directory}: cannot start ({reason})") from None
        self._files = files
        self._task = asyncio.create_task(self._run(files), name="audit-writer")
        self._task.add_done_callback(self._stopped)

    async def write(self, record: AuditRecord) -> None:
        """Return once ``record`` is durable; raise ``AuditUnavailable`` if it cannot be written.

        A write that is cancelled while waiting may still be recorded (the request did happen).
        """
        if self._task is None or self._task.done() or self._closing:
            self._counts["refused"] += 1
            raise AuditUnavailable()
        data = encode_record(record)
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((data, future))
        if not self._wakeup.is_set():
            self._wakeup.set()
        await future

    async def close(self) -> None:
        """Write what is pending, sign a final checkpoint and close the segment."""
        if self._task is None:
            self._executor.shutdown(wait=False)
            return
        self._closing = True
        self._wakeup.set()
        try:
            await asyncio.shield(self._task)
        finally:
            self._executor.shutdown(wait=False)

    @property
    def stats(self) -> AuditStats:
        c, files = self._counts, self._files
        files_counts = files.counts if files is not None else {"opened": 0, "checkpoints": 0, "removed": 0}
        segment = 0
        if files is not None:
            segment = files.segment.index if files.segment is not None else files.next[0] - 1
        return AuditStats(
            records_written=c["records"],
            commits=c["commits"],
            refused_records=c["refused"],
            failures=c["failures"],
            available=self._available,
            segment=segment,
            segments_opened=files_counts["opened"],
            checkpoints=files_counts["checkpoints"],
            segments_removed=files_counts["removed"],
        )

    # -- the writer task -------------------------------------------------------------------------

    async def _run(self, files: LogFiles) -> None:
        try:
            while True:
                if not self._pending:
                    if self._closing:
                        break
                    await self._sleep(files)
                if self._pending:
                    batch = self._pending[:MAX_GROUP]
                    del self._pending[:MAX_GROUP]
                    await self._commit(files, batch)
                await self._maintain(files)
        finally:
            await self._finish(files)

    async def _sleep(self, files: LogFiles) -> None:
        timeout = self._next_due(files) - time.monotonic()
        if timeout > 0:
            try:
                async with asyncio.timeout(timeout):
                    await self._wakeup.wait()
            except TimeoutError:
                pass
        self._wakeup.clear()

    def _next_due(self, files: LogFiles) -> float:
        now, settings = time.monotonic(), self.settings
        due = min(now + RETENTION_CHECK_S, self._next_retention) if settings.retention_days else now + 60
        segment = files.segment
        if segment is None or segment.broken:
            return min(due, self._retry_at)
        if segment.seq > segment.checkpointed_seq:
            due = min(due, files.last_checkpoint + settings.checkpoint_interval_s)
        if segment.seq:
            due = min(due, segment.opened + settings.segment_max_age_s)
        return due

    async def _commit(self, files: LogFiles, batch: list[tuple[bytes, asyncio.Future[None]]]) -> None:
        segment = files.segment
        try:
            if segment is None or segment.broken:
                if time.monotonic() < self._retry_at:  # failed just now: refuse without touching the disk
                    self._refuse(batch)
                    return
                segment = await self._io(files.rotate)
            prepared = segment.prepare([data for data, _ in batch])
            await self._io(segment.commit, prepared)
        except OSError as exc:
            self._failed(exc)
            self._refuse(batch)
            return
        except BaseException:
            self._refuse(batch)  # never leave a caller waiting, whatever went wrong
            raise
        self._counts["records"] += len(batch)
        self._counts["commits"] += 1
        self._recovered()
        for _, future in batch:
            if not future.done():
                future.set_result(None)

    def _refuse(self, batch: list[tuple[bytes, asyncio.Future[None]]]) -> None:
        self._counts["refused"] += len(batch)
        for _, future in batch:
            if not future.done():
                future.set_exception(AuditUnavailable())

    async def _maintain(self, files: LogFiles) -> None:
        segment, now, settings = files.segment, time.monotonic(), self.settings
        if segment is None or segment.broken:
            if not self._pending and now >= self._retry_at:  # otherwise the next commit rotates first
                await self._try(files.rotate)
            return
        if segment.seq and (
            segment.size >= settings.segment_max_bytes or now - segment.opened >= settings.segment_max_age_s
        ):
            await self._try(files.rotate)
        elif segment.seq > segment.checkpointed_seq and (
            now - files.last_checkpoint >= settings.checkpoint_interval_s
        ):
            await self._try(files.checkpoint)
        if settings.retention_days and now >= self._next_retention:
            self._next_retention = now + RETENTION_CHECK_S
            await self._try(files.apply_retention, settings.retention_days)

    async def _try(self, action: Callable[..., object], *args: Any) -> None:
        try:
            await self._io(action, *args)
        except OSError as exc:
            self._failed(exc)

    async def _io(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def _finish(self, files: LogFiles) -> None:
        self._refuse(self._pending)
        self._pending.clear()
        try:
            await self._io(files.close_segment)
        except OSError as exc:
            self._failed(exc)
        finally:
            files.release()

    def _stopped(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            logger.error("audit writer stopped unexpectedly", exc_info=task.exception())
        for _, future in self._pending:
            if not future.done():
                future.set_exception(AuditUnavailable())
        self._pending.clear()

    def _failed(self, exc: OSError) -> None:
        self._retry_at = time.monotonic() + RETRY_S
        self._counts["failures"] += 1
        if self._available:
            self._available = False
            logger.error(
                "audit log cannot be written",
                extra={"directory": str(self.directory), "error": exc.strerror or type(exc).__name__},
            )

    def _recovered(self) -> None:
        if not self._available:
            self._available = True
            logger.warning(
                "audit log writable again",
                extra={"directory": str(self.directory), "refused_records": self._counts["refused"]},
            )
