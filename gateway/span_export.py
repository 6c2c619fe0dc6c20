"""Span export in a child process: the service sends each sampled request's span records over a
socket; ``python -m gateway.span_export`` batches and exports them with the SDK (OTLP or console).

Why a process: the SDK's OTLP encoder costs about 50 µs a span here, in Python and under the
service's GIL; a traced gateway request has a dozen spans. Sending the records costs the service one
``marshal`` and one non-blocking ``send`` per request. Nothing on the request path ever waits: a full
socket buffer (the exporter behind) or a dead exporter drops the trace and counts it.

The socket is an ``AF_UNIX`` ``SOCK_SEQPACKET`` pair, one message per request, shared with nobody
else. The child exits when the service closes its end (or dies), after flushing its batch.
"""

from __future__ import annotations

import argparse
import logging
import marshal
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Sequence
from types import FrameType

from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.util.instrumentation import InstrumentationScope

from gateway.tracing import SpanRecord, package_version, readable_spans, service_resource, span_exporter

logger = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 1 << 20
PARENT_WAIT_S = 2.0  # at shutdown; the child finishes its last export on its own after that


class ExporterProcess:
    """The service's side: a ``SpanSink`` writing to the exporter process."""

    def __init__(self, service_name: str, exporter_name: str) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        command = [
            sys.executable, "-m", "gateway.span_export", "--fd", str(theirs.fileno()),
            "--service", service_name, "--exporter", exporter_name,
        ]  # fmt: skip
        # Our own interpreter and module, with arguments we built: no untrusted input.
        self._process = subprocess.Popen(  # noqa: S603
            command, pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL
        )
        theirs.close()
        ours.setblocking(False)
        self._socket = ours
        self.sent = 0
        self.dropped = 0
        self._broken = False

    def emit(self, trace_id: int, spans: list[SpanRecord]) -> None:
        try:
            self._socket.send(marshal.dumps((trace_id, spans)))
            self.sent += 1
        except BlockingIOError:
            self.dropped += 1  # the exporter is behind; never make a request wait for it
        except OSError:
            self.dropped += 1
            if not self._broken:
                self._broken = True
                logger.error("the span exporter process is gone; traces are dropped")

    def flush(self, timeout_ms: int) -> None:
        """Nothing is held here: every record already left for the exporter process."""

    def shutdown(self) -> None:
        self._socket.close()  # the child reads EOF, flushes and exits
        try:
            self._process.wait(PARENT_WAIT_S)
        except subprocess.TimeoutExpired:
            logger.warning("the span exporter is still flushing; leaving it to finish")


def run_exporter(connection: socket.socket, service_name: str, exporter_name: str) -> None:
    """The child's loop: records in, SDK spans out through a batch processor, until EOF."""
    processor = BatchSpanProcessor(span_exporter(exporter_name, os.environ))
    resource = service_resource(service_name)
    scope = InstrumentationScope(f"warden.{service_name}", package_version())
    try:
        while message := connection.recv(MAX_MESSAGE_BYTES):
            trace_id, records = marshal.loads(message)  # noqa: S302 - our parent is the only writer
            for span in readable_spans(resource, scope, trace_id, records):
                processor.on_end(span)
    finally:
        processor.shutdown()  # type: ignore[no-untyped-call]


def _stop(_signum: int, _frame: FrameType | None) -> None:
    raise SystemExit(0)  # unwinds through run_exporter's flush


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gateway.span_export")
    parser.add_argument("--fd", type=int, required=True)
    parser.add_argument("--service", required=True)
    parser.add_argument("--exporter", default="otlp")
    args = parser.parse_args(argv)
    from gateway.logs import configure_logging

    configure_logging("warning")
    # Serving comes first: on a busy machine the exporter yields the CPU (and drops what it cannot
    # export in time, as its batch queue fills) rather than slowing requests down.
    os.nice(10)
    # Ctrl-C reaches the whole process group: the service decides when this process ends (EOF).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _stop)
    run_exporter(socket.socket(fileno=args.fd), args.service, args.exporter)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
