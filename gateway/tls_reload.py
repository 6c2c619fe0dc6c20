"""Reload TLS material when its files change: renewed certificates and rotated CA bundles take
effect without a restart.

Kubernetes (and cert-manager) replace mounted files by swapping a ``..data`` symlink, so the files
are watched by a stat fingerprint (device, inode, modification time, size) of their resolved paths,
polled every ``interval_s``. A change builds a new ``SSLContext`` with the same code as at start
and checks it (``gateway.tls_check``); only a context that passes replaces the current one, in one
assignment, so every user sees the old or the new one. Anything else keeps the last good context
and is reported: a log line naming the file and the problem, and ``status()``.

The gateway polls on use (``poll_if_due``, on its event loop); the worker polls from a thread and
swaps the context of each new handshake (``serve_current``).
"""

from __future__ import annotations

import datetime as dt
import logging
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from gateway.config import ConfigError
from gateway.tls import TlsFiles, server_context
from gateway.tls_check import TlsMaterialError, check_material

logger = logging.getLogger(__name__)

FileStamp = tuple[str, int, int, int, int] | None
Fingerprint = tuple[FileStamp, ...]


def fingerprint(files: TlsFiles) -> Fingerprint:
    """What changes when any of the files is replaced, in place or by a symlink swap."""
    return tuple(_stamp(path) for path in (files.ca, files.cert, files.key))


def _stamp(path: Path | None) -> FileStamp:
    if path is None:
        return None
    real = path.resolve()  # through every symlink, so a swapped ``..data`` shows
    try:
        st = real.stat()
    except OSError:
        return (str(real), -1, -1, -1, -1)  # missing for now: a change like any other
    return (str(real), st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclass(frozen=True, slots=True)
class TlsReloadStatus:
    generation: int  # successful reloads so far: 0 = the files loaded at start
    reloads_failed: int
    last_error: str | None
    not_after: str | None  # the expiry of the certificate in use, ISO 8601


class ReloadingContext:
    """An ``SSLContext`` rebuilt from ``files`` whenever they change and the result checks out."""

    def __init__(
        self,
        files: TlsFiles,
        build: Callable[[], ssl.SSLContext],
        *,
        interval_s: float,
        label: str,
        clock: Callable[[], float] = time.monotonic,
        utcnow: Callable[[], dt.datetime] = _utcnow,
    ) -> None:
        self.files, self.interval_s, self.label = files, interval_s, label
        self._build, self._clock, self._utcnow = build, clock, utcnow
        self._lock = threading.Lock()  # one reload at a time: the poller thread and on-use polls
        self._stamp = fingerprint(files)
        # At start the material loads as before (a ConfigError stops the service); a failed check
        # is only a warning here, so that a peer's refusal can be seen and tested.
        self._context = build()
        self._not_after: dt.datetime | None = None
        try:
            self._not_after = check_material(files, now=utcnow())
        except TlsMaterialError as exc:
            logger.warning("tls material in use fails its check", extra={"tls": label, "reason": str(exc)})
        self.generation = self.reloads_failed = 0
        self.last_error: str | None = None
        self._refused: tuple[Fingerprint, str] | None = None
        self._expiry_reported = False
        self._next_poll = clock() + interval_s

    @property
    def context(self) -> ssl.SSLContext:
        """The current context: no I/O, safe from any thread."""
        return self._context

    def status(self) -> TlsReloadStatus:
        not_after = self._not_after.isoformat() if self._not_after is not None else None
        return TlsReloadStatus(self.generation, self.reloads_failed, self.last_error, not_after)

    def poll_if_due(self) -> bool:
        """Poll when ``interval_s`` has passed since the last poll (never when it is 0)."""
        if self.interval_s <= 0 or self._clock() < self._next_poll:
            return False
        self.poll()
        return True

    def poll(self) -> bool:
        """Check the files now; True when a new context was swapped in."""
        with self._lock:
            self._next_poll = self._clock() + self.interval_s
            self._report_expiry()
            stamp = fingerprint(self.files)
            if stamp == self._stamp:
                return False
            try:
                not_after = check_material(self.files, now=self._utcnow())  # the more precise errors
                context = self._build()
            except (ConfigError, TlsMaterialError) as exc:
                return self._refuse(stamp, str(exc))
            except OSError as exc:  # e.g. a file made unreadable; the path, never the content
                return self._refuse(stamp, f"{exc.filename}: cannot read ({exc.strerror})")
            if fingerprint(self.files) != stamp:
                return False  # replaced while being read: the next poll reads the finished set
            self._context, self._stamp, self._not_after = context, stamp, not_after
            self.generation += 1
            self.last_error, self._refused, self._expiry_reported = None, None, False
            logger.info(
                "tls material reloaded",
                extra={
                    "tls": self.label,
                    "generation": self.generation,
                    "not_after": self.status().not_after,
                },
            )
            return True

    def _refuse(self, stamp: Fingerprint, reason: str) -> bool:
        # Retried at every poll (a half-written file, a certificate not valid yet), reported once.
        if self._refused != (stamp, reason):
            self._refused = (stamp, reason)
            self.reloads_failed += 1
            self.last_error = reason
            logger.error(
                "tls material refused; the last good one stays in use",
                extra={"tls": self.label, "reason": reason},
            )
        return False

    def _report_expiry(self) -> None:
        if self._not_after is None or self._expiry_reported or self._utcnow() < self._not_after:
            return
        self._expiry_reported = True
        self.last_error = (
            self.last_error or f"the certificate in use expired at {self._not_after.isoformat()}"
        )
        logger.error("tls certificate in use has expired; replace its files", extra={"tls": self.label})

    def start_polling(self) -> threading.Thread | None:
        """Poll every ``interval_s`` from a daemon thread (for servers); None when disabled."""
        if self.interval_s <= 0:
            return None

        def run() -> None:
            while True:
                time.sleep(self.interval_s)
                try:
                    self.poll()
                except Exception as exc:  # noqa: BLE001 - the poller must outlive any surprise
                    logger.error("tls reload failed", extra={"tls": self.label, "error": type(exc).__name__})

        thread = threading.Thread(target=run, name=f"tls-reload-{self.label}", daemon=True)
        thread.start()
        return thread


def serve_current(listening: ssl.SSLContext, source: ReloadingContext) -> None:
    """Make every new handshake on ``listening`` use ``source``'s current context.

    The SNI callback runs on the ClientHello, before the server's certificate is chosen and before
    the client's certificate is requested, so both the certificate and the CA store that verifies
    the client come from the swapped-in context; the listener itself is never restarted.
    """

    def use_current(ssl_object: ssl.SSLObject, _server_name: str | None, _listening: ssl.SSLContext) -> None:
        ssl_object.context = source.context

    listening.sni_callback = use_current


def reloading_server_context(
    files: TlsFiles, *, require_client_cert: bool, interval_s: float, label: str
) -> ssl.SSLContext:
    """A listening context that serves the current material of ``files``, polled every ``interval_s``."""
    source = ReloadingContext(
        files,
        lambda: server_context(files, require_client_cert=require_client_cert),
        interval_s=interval_s,
        label=label,
    )
    if interval_s > 0:
        serve_current(source.context, source)
        source.start_polling()
    return source.context
