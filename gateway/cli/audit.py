"""``python -m gateway audit keygen|verify|read|stats``: the audit log for auditors and operators.

``keygen`` writes the auditors' X25519 key pair (private key encrypted under a passphrase) and the
gateway's Ed25519 checkpoint-signing pair. ``verify`` needs only the signing public key; ``read``
needs the auditors' private key and its passphrase. Long runs report progress on stderr.
"""

from __future__ import annotations

import argparse
import datetime as dt
import getpass
import json
import os
import re
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any, TextIO

from gateway.audit.keys import (
    MIN_PASSPHRASE_CHARS,
    KeyFileError,
    generate_keys,
    load_auditor_private_key,
    load_verify_key,
)
from gateway.audit.reader import ReadError, RecordFilter, log_stats, read_records
from gateway.audit.verify import verify_log

_RELATIVE = re.compile(r"^(\d+)([smhd])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86_400}
_TABLE = (
    ("time", 27),
    ("where", 12),
    ("subject", 20),
    ("tenant", 12),
    ("endpoint", 16),
    ("model", 20),
    ("decision", 20),
    ("status", 6),
    ("tokens", 11),
    ("ms", 9),
)


def register(commands: Any) -> None:
    parser: argparse.ArgumentParser = commands.add_parser("audit", help="the audit log for auditors")
    actions = parser.add_subparsers(dest="audit_command", required=True, metavar="ACTION")

    keygen = actions.add_parser(
        "keygen",
        help="create the auditors' key pair and the gateway's signing key pair",
        description="Writes auditor-key.pem (0600, encrypted with a passphrase), auditor-public.pem, "
        "signing-key.pem (0600) and signing-public.pem. The gateway gets auditor-public.pem and "
        "signing-key.pem; auditors keep auditor-key.pem; anyone verifying gets signing-public.pem.",
    )
    keygen.add_argument("directory", type=Path)
    keygen.add_argument("--passphrase-file", type=Path, help="read the passphrase from a file (else prompt)")
    keygen.add_argument("--force", action="store_true", help="replace existing key files")
    keygen.set_defaults(handler=run_keygen)

    verify = actions.add_parser(
        "verify",
        help="check that no record or segment was changed, removed, reordered or added",
        description="Exit 0 when the log is intact; otherwise exit 1 naming the first bad segment, "
        "sequence number and what is wrong.",
    )
    verify.add_argument("directory", type=Path)
    verify.add_argument("--signing-key", type=Path, required=True, help="the gateway's signing public key")
    verify.set_defaults(handler=run_verify)

    read = actions.add_parser("read", help="decrypt and filter records (auditors)")
    read.add_argument("directory", type=Path)
    read.add_argument("--key", type=Path, required=True, help="the auditors' private key (auditor-key.pem)")
    read.add_argument("--passphrase-file", type=Path, help="read the passphrase from a file (else prompt)")
    for name in ("since", "until"):
        read.add_argument(f"--{name}", help="ISO 8601 time (UTC unless offset given), or 30m, 12h, 7d ago")
    for name in ("subject", "tenant", "decision", "model"):
        read.add_argument(f"--{name}", help=f"only records with this {name}")
    read.add_argument("--format", choices=("jsonl", "table"), default="jsonl")
    read.set_defaults(handler=run_read)

    stats = actions.add_parser("stats", help="segments, records, sizes and checkpoints (no key needed)")
    stats.add_argument("directory", type=Path)
    stats.add_argument("--format", choices=("table", "json"), default="table")
    stats.set_defaults(handler=run_stats)


class Progress:
    """Progress on stderr for runs longer than a second, at most one update per second."""

    def __init__(self, label: str, stream: TextIO | None = None) -> None:
        self.label = label
        self.stream = stream or sys.stderr
        self.started = self.shown = time.monotonic()
        self.printed = False

    def __call__(self, done: int, total: int, records: int) -> None:
        now = time.monotonic()
        if now - self.shown < 1.0 and done < total:
            return
        if now - self.started < 1.0 and not self.printed:
            return
        self.shown, self.printed = now, True
        end = "\r" if self.stream.isatty() and done < total else "\n"
        line = f"{self.label}: {done}/{total} segments, {records} records"
        print(line, end=end, file=self.stream, flush=True)


def _fail(message: str, code: int = 2) -> int:
    print(f"error: {message}", file=sys.stderr)
    return code


def _passphrase(path: Path | None, *, confirm: bool) -> bytes:
    if path is not None:
        try:
            return path.read_bytes().rstrip(b"\r\n")
        except OSError as exc:
            raise KeyFileError(f"{path}: cannot read the passphrase file ({exc.strerror})") from None
    if not sys.stdin.isatty():
        raise KeyFileError("no terminal to ask for the passphrase on; give --passphrase-file")
    first = getpass.getpass("Passphrase for the auditors' private key: ")
    if confirm and getpass.getpass("Repeat the passphrase: ") != first:
        raise KeyFileError("the passphrases differ")
    return first.encode("utf-8")


def run_keygen(args: argparse.Namespace) -> int:
    try:
        passphrase = _passphrase(args.passphrase_file, confirm=True)
        if len(passphrase.decode("utf-8", errors="replace")) < MIN_PASSPHRASE_CHARS:
            return _fail(f"the passphrase must be at least {MIN_PASSPHRASE_CHARS} characters")
        paths = generate_keys(args.directory, passphrase, force=args.force)
    except KeyFileError as exc:
        return _fail(str(exc))
    for path in paths.all():
        print(path)
    return 0


def run_verify(args: argparse.Namespace) -> int:
    try:
        key = load_verify_key(args.signing_key)
    except KeyFileError as exc:
        return _fail(str(exc))
    report = verify_log(args.directory, key, Progress("verify"))
    for note in report.notes:
        print(f"note: {note}", file=sys.stderr)
    if report.problem is not None:
        print(f"FAILED: {report.problem}", file=sys.stderr)
        return 1
    print(f"ok: {report.segments} segments, {report.records} records, {report.checkpoints} checkpoints")
    return 0


def parse_time(text: str, now: float | None = None) -> float:
    """Unix seconds from an ISO 8601 time (UTC unless it says otherwise) or a span ago (``90m``)."""
    relative = _RELATIVE.match(text)
    if relative:
        return (now if now is not None else time.time()) - int(relative.group(1)) * _UNITS[relative.group(2)]
    try:
        moment = dt.datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"not a time: {text!r} (use e.g. 2026-05-01T12:00:00Z, 2026-05-01 or 12h)") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return moment.timestamp()


def _iso(unix: float) -> str:
    return dt.datetime.fromtimestamp(unix, dt.UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def run_read(args: argparse.Namespace) -> int:
    try:
        where = RecordFilter(
            since=parse_time(args.since) if args.since else None,
            until=parse_time(args.until) if args.until else None,
            subject=args.subject,
            tenant=args.tenant,
            decision=args.decision,
            model=args.model,
        )
    except ValueError as exc:
        return _fail(str(exc))
    try:
        key = load_auditor_private_key(args.key, _passphrase(args.passphrase_file, confirm=False))
    except KeyFileError as exc:
        return _fail(str(exc))
    records = read_records(args.directory, key, where, Progress("read"))
    try:
        count = _write_jsonl(records) if args.format == "jsonl" else _write_table(records)
    except ReadError as exc:
        return _fail(str(exc), code=1)
    except OSError as exc:
        if isinstance(exc, BrokenPipeError):
            # The reader went away (``| head``); keep the interpreter's final flush quiet.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 0
        return _fail(f"{args.directory}: cannot read ({exc.strerror})", code=1)
    print(f"{count} record(s)", file=sys.stderr)
    return 0


def _write_jsonl(records: Iterable[dict[str, Any]]) -> int:
    count = 0
    for record in records:
        record["time"] = _iso(record["time"])
        sys.stdout.write(json.dumps(record, ensure_ascii=False) + "\n")
        count += 1
    return count


def _cell(value: str, width: int) -> str:
    return value if len(value) <= width else value[: width - 1] + "~"


def _write_table(records: Iterable[dict[str, Any]]) -> int:
    print("  ".join(f"{name:<{width}}" for name, width in _TABLE).rstrip())
    count = 0
    for r in records:
        tokens = f"{r['tokens_in'] if r['tokens_in'] is not None else '-'}/"
        tokens += f"{r['tokens_out'] if r['tokens_out'] is not None else '-'}"
        cells = (
            _iso(r["time"]),
            f"{r['segment']}:{r['seq']}",
            r["subject"] or "-",
            r["tenant"] or "-",
            r["endpoint"],
            r["model"] or "-",
            r["decision"] or "-",
            str(r["status"]),
            tokens,
            f"{r['latency_ms']:.1f}",
        )
        line = "  ".join(f"{_cell(c, w):<{w}}" for c, (_, w) in zip(cells, _TABLE, strict=True))
        print(line.rstrip())
        count += 1
    return count


def run_stats(args: argparse.Namespace) -> int:
    try:
        stats = log_stats(args.directory, Progress("stats"))
    except (OSError, ReadError) as exc:
        return _fail(str(exc) if isinstance(exc, ReadError) else f"{args.directory}: {exc.strerror}", code=1)
    if args.format == "json":
        segments = [
            {"segment": s.index, "created": _iso(s.created), "records": s.records, "bytes": s.bytes,
             "checkpoints": s.checkpoints, "closed": s.closed, "unsigned": s.unsigned}
            for s in stats.segments
        ]  # fmt: skip
        print(json.dumps({"segments": segments, "records": stats.records, "bytes": stats.bytes}, indent=2))
        return 0
    print(f"{'segment':>8}  {'created':<27}  {'records':>9}  {'bytes':>12}  {'checkpoints':>11}  state")
    for s in stats.segments:
        state = "closed" if s.closed else f"open ({s.unsigned} unsigned)"
        created = _iso(s.created)
        print(f"{s.index:>8}  {created:<27}  {s.records:>9}  {s.bytes:>12}  {s.checkpoints:>11}  {state}")
    print(f"{len(stats.segments)} segment(s), {stats.records} record(s), {stats.bytes} bytes")
    return 0
