"""Segment encryption: only the auditors' private key decrypts, and only at the record's own position;
the running gateway holds nothing that can read a closed segment."""

from __future__ import annotations

import asyncio
import gc
import types
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from gateway.audit import AuditWriter, ReadError, read_records
from gateway.audit.crypto import DecryptError, SegmentOpener, SegmentSealer, _position
from gateway.audit.format import RecordLine, SegmentHeader, list_segments, records_path
from gateway.audit.keys import AuditKeyPaths
from tests.gateway.test_audit_support import auditor_key, make_keys, sample_record, settings_for, write_log

SEGMENT = bytes(range(16))


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> AuditKeyPaths:
    return make_keys(tmp_path_factory.mktemp("audit-keys"))


def test_records_decrypt_with_the_auditors_key() -> None:
    auditor = X25519PrivateKey.generate()
    sealer = SegmentSealer(SEGMENT, auditor.public_key())
    ciphertext = sealer.seal(1, b"record one")
    opener = SegmentOpener(SEGMENT, sealer.ephemeral_public, auditor)
    assert opener.open(1, ciphertext) == b"record one"
    assert b"record one" not in ciphertext


MOVES: list[tuple[str, Callable[[bytes], tuple[bytes, int, bytes]]]] = [
    ("read as another sequence number", lambda ct: (SEGMENT, 2, ct)),
    ("read as part of another segment", lambda ct: (bytes(16), 1, ct)),
    ("one ciphertext bit flipped", lambda ct: (SEGMENT, 1, bytes([ct[0] ^ 1]) + ct[1:])),
    ("tag cut off", lambda ct: (SEGMENT, 1, ct[:-16])),
]


@pytest.mark.parametrize("move", [m[1] for m in MOVES], ids=[m[0] for m in MOVES])
def test_a_record_only_decrypts_at_its_own_position(
    move: Callable[[bytes], tuple[bytes, int, bytes]],
) -> None:
    auditor = X25519PrivateKey.generate()
    sealer = SegmentSealer(SEGMENT, auditor.public_key())
    segment_id, seq, ciphertext = move(sealer.seal(1, b"record one"))
    with pytest.raises(DecryptError):
        SegmentOpener(segment_id, sealer.ephemeral_public, auditor).open(seq, ciphertext)


def test_the_wrong_auditor_key_cannot_decrypt() -> None:
    sealer = SegmentSealer(SEGMENT, X25519PrivateKey.generate().public_key())
    ciphertext = sealer.seal(1, b"record one")
    with pytest.raises(DecryptError):
        SegmentOpener(SEGMENT, sealer.ephemeral_public, X25519PrivateKey.generate()).open(1, ciphertext)


def test_reading_a_log_with_another_auditor_key_names_both_keys(tmp_path: Path, keys: AuditKeyPaths) -> None:
    write_log(settings_for(tmp_path / "log", keys), 3)
    with pytest.raises(ReadError, match=r"segment 1 is encrypted for auditor key [0-9a-f]{32}, not for"):
        list(read_records(tmp_path / "log", X25519PrivateKey.generate()))


def test_a_nonce_is_never_used_twice_under_one_key() -> None:
    sealer = SegmentSealer(SEGMENT, X25519PrivateKey.generate().public_key())
    sealer.seal(1, b"a")
    sealer.seal(2, b"b")
    for seq in (2, 1):
        with pytest.raises(ValueError, match="must increase"):
            sealer.seal(seq, b"again")


def test_every_segment_gets_its_own_ephemeral_key(tmp_path: Path, keys: AuditKeyPaths) -> None:
    write_log(settings_for(tmp_path, keys, segment_max_bytes=4096), 12)
    headers = [
        SegmentHeader.decode(records_path(tmp_path, index).read_bytes().split(b"\n")[0])
        for index in list_segments(tmp_path)
    ]
    assert len(headers) >= 3
    assert len({h.ephemeral_public for h in headers}) == len(headers)
    assert len({h.segment_id for h in headers}) == len(headers)


_OPAQUE = (types.ModuleType, type, types.FunctionType, types.BuiltinFunctionType, types.FrameType,
           types.CoroutineType, types.GeneratorType)  # fmt: skip


def reachable(root: object) -> list[object]:
    """Every object the writer can reach through its own state (not through code or call frames)."""
    seen: set[int] = set()
    found: list[object] = []
    stack = [root]
    while stack:
        obj = stack.pop()
        if id(obj) in seen or isinstance(obj, _OPAQUE):
            continue
        seen.add(id(obj))
        found.append(obj)
        stack.extend(gc.get_referents(obj))
    return found


def test_a_running_writer_cannot_decrypt_a_closed_segment(tmp_path: Path, keys: AuditKeyPaths) -> None:
    async def scenario() -> list[object]:
        writer = AuditWriter(settings_for(tmp_path, keys, segment_max_bytes=4096))
        await writer.start()
        for number in range(8):
            await writer.write(sample_record(number))
        assert writer.stats.segment >= 2  # segment 1 is closed, the writer runs on
        held = reachable(writer)
        await writer.close()
        return held

    held = asyncio.run(scenario())
    assert not any(isinstance(obj, X25519PrivateKey) for obj in held)
    assert any(isinstance(obj, SegmentSealer) for obj in held)  # the walk does see the writer's keys
    ciphers = [obj for obj in held if isinstance(obj, AESGCM)]
    assert ciphers
    lines = records_path(tmp_path, 1).read_bytes().split(b"\n")
    header, record = SegmentHeader.decode(lines[0]), RecordLine.decode(lines[1])
    nonce, aad = _position(header.segment_id, record.seq)
    for cipher in ciphers:
        with pytest.raises(InvalidTag):
            cipher.decrypt(nonce, record.ciphertext, aad)
    # The auditors can.
    opener = SegmentOpener(header.segment_id, header.ephemeral_public, auditor_key(keys))
    assert b'"request_id":"req-000000"' in opener.open(record.seq, record.ciphertext)


def test_segment_files_are_private(tmp_path: Path, keys: AuditKeyPaths) -> None:
    write_log(settings_for(tmp_path / "log", keys), 2)
    assert (tmp_path / "log").stat().st_mode & 0o777 == 0o700
    for path in (tmp_path / "log").iterdir():
        assert path.stat().st_mode & 0o077 == 0, path.name
