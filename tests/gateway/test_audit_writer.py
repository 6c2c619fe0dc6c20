"""``AuditWriter`` on real files: group commit, rotation, checkpoints, retention, crash repair, disk full."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gateway.audit import AuditError, AuditUnavailable, AuditWriter, log_stats, read_records
from gateway.audit.format import checkpoints_path, encode_record_line, line_hash, list_segments, records_path
from gateway.audit.keys import AuditKeyPaths
from tests.gateway.test_audit_support import (
    auditor_key,
    make_keys,
    sample_record,
    settings_for,
    verify,
    write_all,
    write_log,
)

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> AuditKeyPaths:
    return make_keys(tmp_path_factory.mktemp("audit-keys"))


def request_ids(log: Path, keys: AuditKeyPaths) -> list[str]:
    return [record["request_id"] for record in read_records(log, auditor_key(keys))]


def lines_in(path: Path) -> int:
    return path.read_bytes().count(b"\n")


def test_concurrent_writes_share_fsyncs(tmp_path: Path, keys: AuditKeyPaths) -> None:
    records = [sample_record(number) for number in range(2000)]
    writer = asyncio.run(write_all(settings_for(tmp_path, keys), records, concurrent=True))
    stats = writer.stats
    assert stats.records_written == 2000
    assert stats.commits <= 20  # one fsync per group, not per record
    assert sorted(request_ids(tmp_path, keys)) == [r.request_id for r in records]
    assert verify(tmp_path, keys).ok


def test_write_returns_only_once_its_record_is_on_disk(tmp_path: Path, keys: AuditKeyPaths) -> None:
    async def scenario() -> list[int]:
        writer = AuditWriter(settings_for(tmp_path, keys))
        await writer.start()
        seen = []
        for number in range(10):
            await writer.write(sample_record(number))
            seen.append(lines_in(records_path(tmp_path, writer.stats.segment)) - 1)  # minus the header
        await writer.close()
        return seen

    assert asyncio.run(scenario()) == list(range(1, 11))


def test_chain_continues_across_rotation_and_restarts(tmp_path: Path, keys: AuditKeyPaths) -> None:
    settings = settings_for(tmp_path, keys, segment_max_bytes=8192)
    first = write_log(settings, 30)
    write_log(settings, 30, start=30)
    assert first.stats.segments_opened > 2  # rotated by size
    report = verify(tmp_path, keys)
    assert report.ok, report.problem
    assert report.records == 60
    assert request_ids(tmp_path, keys) == [f"req-{n:06d}" for n in range(60)]


def test_segments_rotate_by_age(tmp_path: Path, keys: AuditKeyPaths) -> None:
    async def scenario() -> int:
        writer = AuditWriter(settings_for(tmp_path, keys, segment_max_age_s=0.1))
        await writer.start()
        await writer.write(sample_record(0))
        await asyncio.sleep(0.3)
        await writer.write(sample_record(1))
        segment = writer.stats.segment
        await writer.close()
        return segment

    assert asyncio.run(scenario()) >= 2
    assert request_ids(tmp_path, keys) == ["req-000000", "req-000001"]
    assert verify(tmp_path, keys).ok


def test_checkpoints_are_signed_periodically_while_records_arrive(
    tmp_path: Path, keys: AuditKeyPaths
) -> None:
    async def scenario() -> tuple[int, int]:
        writer = AuditWriter(settings_for(tmp_path, keys, checkpoint_interval_s=0.05))
        await writer.start()
        opened = writer.stats.checkpoints
        await writer.write(sample_record(0))
        await asyncio.sleep(0.3)
        after_idle = writer.stats.checkpoints
        await asyncio.sleep(0.2)  # nothing new to sign: no new checkpoint
        unchanged = writer.stats.checkpoints
        await writer.close()
        return after_idle - opened, unchanged - after_idle

    new, while_idle = asyncio.run(scenario())
    assert (new, while_idle) == (1, 0)


def test_retention_removes_only_segments_older_than_the_limit(tmp_path: Path, keys: AuditKeyPaths) -> None:
    for session in range(3):
        write_log(settings_for(tmp_path, keys), 4, start=session * 4)  # segments 1, 2, 3
    time.sleep(0.3)

    async def reopen(retention_days: float) -> AuditWriter:
        writer = AuditWriter(settings_for(tmp_path, keys, retention_days=retention_days))
        await writer.start()
        await writer.write(sample_record(99))
        await asyncio.sleep(0.05)
        await writer.close()
        return writer

    kept = asyncio.run(reopen(retention_days=1.0))
    assert kept.stats.segments_removed == 0
    assert list_segments(tmp_path) == [1, 2, 3, 4]
    time.sleep(0.3)
    # Segments 1-3 ended before segment 4 was created, over 0.2 s ago: they go. Segment 4 may hold
    # records up to the creation of segment 5 (just now), so it stays.
    pruned = asyncio.run(reopen(retention_days=0.2 / 86_400))
    assert pruned.stats.segments_removed == 3
    assert list_segments(tmp_path) == [4, 5]
    report = verify(tmp_path, keys)
    assert report.ok, report.problem
    assert any("removed by retention" in note for note in report.notes)
    # Deleting what retention kept is still caught: the log says it keeps segments from 4 on.
    records_path(tmp_path, 4).unlink()
    problem = verify(tmp_path, keys).problem
    assert problem is not None and (problem.segment, problem.seq) == (4, None)


def _crash_state(log: Path, index: int) -> None:
    """What a crash leaves: no final checkpoint, and half a record at the end."""
    ckpt = checkpoints_path(log, index)
    lines = ckpt.read_bytes().split(b"\n")[:-1]
    assert json.loads(lines[-1])["final"] is True
    ckpt.write_bytes(b"".join(line + b"\n" for line in lines[:-1]))
    with records_path(log, index).open("ab") as handle:
        handle.write(b'{"seq":6,"prev":"0123')


def test_torn_last_record_is_cut_at_start_without_breaking_the_chain(
    tmp_path: Path, keys: AuditKeyPaths
) -> None:
    settings = settings_for(tmp_path, keys, checkpoint_interval_s=0.01)
    write_log(settings, 5)
    _crash_state(tmp_path, 1)
    assert verify(tmp_path, keys).ok  # before the restart: a note, not a failure
    write_log(settings, 3, start=5)
    assert records_path(tmp_path, 1).read_bytes().endswith(b"\n")
    assert lines_in(records_path(tmp_path, 1)) == 6  # header and five records
    report = verify(tmp_path, keys)
    assert report.ok, report.problem
    assert report.notes == []
    assert request_ids(tmp_path, keys) == [f"req-{n:06d}" for n in range(8)]


def test_damage_before_the_last_checkpoint_is_left_as_evidence(tmp_path: Path, keys: AuditKeyPaths) -> None:
    settings = settings_for(tmp_path, keys)
    write_log(settings, 5)
    path = records_path(tmp_path, 1)
    data = bytearray(path.read_bytes())
    at = data.index(b'"seq":2,') + 100
    data[at] = ord("A") if data[at] != ord("A") else ord("B")
    path.write_bytes(bytes(data))
    write_log(settings, 1, start=5)
    assert path.read_bytes() == bytes(data)
    problem = verify(tmp_path, keys).problem
    assert problem is not None and (problem.segment, problem.seq) == (1, 2)


def test_records_appended_to_a_closed_segment_are_never_signed_at_restart(
    tmp_path: Path, keys: AuditKeyPaths
) -> None:
    settings = settings_for(tmp_path, keys)
    write_log(settings, 3)
    last = records_path(tmp_path, 1).read_bytes().split(b"\n")[-2]
    with records_path(tmp_path, 1).open("ab") as handle:
        handle.write(encode_record_line(4, line_hash(last), b"forged record") + b"\n")
    signed_before = checkpoints_path(tmp_path, 1).read_bytes()
    write_log(settings, 1, start=3)
    assert checkpoints_path(tmp_path, 1).read_bytes() == signed_before
    problem = verify(tmp_path, keys).problem
    assert problem is not None and (problem.segment, problem.seq) == (1, 4)
    assert "added after the segment was closed" in problem.what


def test_a_second_writer_on_the_same_directory_is_refused(tmp_path: Path, keys: AuditKeyPaths) -> None:
    async def scenario() -> None:
        first = AuditWriter(settings_for(tmp_path, keys))
        await first.start()
        try:
            with pytest.raises(AuditError, match="another process is writing"):
                await AuditWriter(settings_for(tmp_path, keys)).start()
        finally:
            await first.close()

    asyncio.run(scenario())


def test_writes_after_close_are_refused(tmp_path: Path, keys: AuditKeyPaths) -> None:
    async def scenario() -> None:
        writer = AuditWriter(settings_for(tmp_path, keys))
        await writer.start()
        await writer.close()
        with pytest.raises(AuditUnavailable):
            await writer.write(sample_record(0))
        assert writer.stats.refused_records == 1

    asyncio.run(scenario())


def test_unreadable_keys_stop_the_start_with_a_clear_error(tmp_path: Path, keys: AuditKeyPaths) -> None:
    settings = settings_for(tmp_path, keys, auditor_public_key=keys.signing_public)
    with pytest.raises(AuditError, match="expected the auditors' X25519 public key"):
        asyncio.run(AuditWriter(settings).start())


DISK_FULL_CHILD = """
import asyncio, json, logging, resource, signal, sys, time
from pathlib import Path
from gateway.audit import AuditUnavailable, AuditWriter
from gateway.audit.keys import AuditKeyPaths
from tests.gateway.test_audit_support import sample_record, settings_for

logging.basicConfig(stream=sys.stderr, format="%(levelname)s %(message)s", level=logging.INFO)
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead

async def main() -> None:
    writer = AuditWriter(settings_for(Path(sys.argv[1]), AuditKeyPaths(Path(sys.argv[2]))))
    await writer.start()
    for number in range(20):
        await writer.write(sample_record(number))
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (512, hard))  # every file here is past 512 bytes
    refused = []
    for number in range(20, 25):
        try:
            await writer.write(sample_record(number))
        except AuditUnavailable as exc:
            refused.append((number, exc.status_code, exc.code))
    failing = writer.stats
    resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    await asyncio.sleep(1.2)  # the writer retries by itself
    for number in range(25, 30):
        await writer.write(sample_record(number))
    recovered = writer.stats
    await writer.close()
    print(json.dumps({"refused": refused, "available_while_failing": failing.available,
                      "refused_count": failing.refused_records, "available_after": recovered.available}))

asyncio.run(main())
"""


def _child_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO)}


def test_disk_full_refuses_writes_keeps_the_log_intact_and_recovers(
    tmp_path: Path, keys: AuditKeyPaths
) -> None:
    script = tmp_path / "child.py"
    script.write_text(DISK_FULL_CHILD)
    log = tmp_path / "log"
    done = subprocess.run(
        [sys.executable, str(script), str(log), str(keys.root)],
        capture_output=True,
        text=True,
        env=_child_env(),
        cwd=REPO,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["refused"] == [[n, 503, "audit_unavailable"] for n in range(20, 25)]
    assert result["available_while_failing"] is False and result["refused_count"] == 5
    assert result["available_after"] is True
    # One log line when writing starts failing and one when it works again, however many refusals.
    assert done.stderr.count("audit log cannot be written") == 1
    assert done.stderr.count("audit log writable again") == 1
    report = verify(log, keys)
    assert report.ok, report.problem
    assert request_ids(log, keys) == [f"req-{n:06d}" for n in [*range(20), *range(25, 30)]]


KILL_CHILD = """
import asyncio, sys
from pathlib import Path
from gateway.audit import AuditWriter
from gateway.audit.keys import AuditKeyPaths
from tests.gateway.test_audit_support import sample_record, settings_for

async def main() -> None:
    settings = settings_for(Path(sys.argv[1]), AuditKeyPaths(Path(sys.argv[2])),
                            segment_max_bytes=256 * 1024, checkpoint_interval_s=0.05)
    writer = AuditWriter(settings)
    await writer.start()

    async def client(first: int) -> None:
        number = first
        while True:
            await writer.write(sample_record(number))
            sys.stdout.write(f"{number}\\n")  # the response goes out only after the record is durable
            sys.stdout.flush()
            number += 64

    await asyncio.gather(*(client(k) for k in range(64)))

asyncio.run(main())
"""


@pytest.mark.slow
def test_sigkill_under_load_loses_no_acknowledged_record(tmp_path: Path, keys: AuditKeyPaths) -> None:
    script = tmp_path / "child.py"
    script.write_text(KILL_CHILD)
    log = tmp_path / "log"
    acknowledged: set[int] = set()
    with subprocess.Popen(
        [sys.executable, str(script), str(log), str(keys.root)],
        stdout=subprocess.PIPE,
        env=_child_env(),
        cwd=REPO,
    ) as child:
        assert child.stdout is not None
        deadline = time.monotonic() + 30
        while len(acknowledged) < 5000 and time.monotonic() < deadline:
            line = child.stdout.readline()
            if not line:
                break
            acknowledged.add(int(line))
        child.send_signal(signal.SIGKILL)
        acknowledged.update(int(line) for line in child.stdout.read().split())
    assert len(acknowledged) >= 5000
    assert not log_stats(log).segments[-1].closed  # killed mid-flight: no final checkpoint
    assert verify(log, keys).ok
    write_log(settings_for(log, keys), 1, start=10**6)  # restart: repair, then a fresh segment
    report = verify(log, keys)
    assert report.ok, report.problem
    recorded = {int(rid.removeprefix("req-")) for rid in request_ids(log, keys)}
    assert acknowledged <= recorded
