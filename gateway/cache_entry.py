"""What a cache entry holds: a whole JSON answer, or the SSE events of a streamed one, post-redaction.

A streamed request is replayed from its events, so a client that asked for a stream gets a stream.
Only complete answers are entries: status 200, and for streams the final ``data: [DONE]`` with no
error event on the way. ``StreamCapture`` collects the events as they are relayed.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

_JSON, _SSE = b"J", b"S"
_LENGTH = struct.Struct(">I")
_DONE = b"data: [DONE]"
_ERROR_EVENT = b'{"error"'


@dataclass(frozen=True, slots=True)
class CachedAnswer:
    """An answer as the client received it. ``events`` (each ending at an event boundary) for streams."""

    content_type: str
    body: bytes = b""
    events: tuple[bytes, ...] = ()
    status: int = 200  # what compute produced; only 200 answers are stored or shared

    @property
    def streamed(self) -> bool:
        return bool(self.events)

    @property
    def size(self) -> int:
        return len(self.body) + sum(len(event) for event in self.events)


def encode_answer(answer: CachedAnswer) -> bytes:
    content_type = answer.content_type.encode("ascii", "replace")[:255]
    head = (_SSE if answer.streamed else _JSON) + bytes([len(content_type)]) + content_type
    if not answer.streamed:
        return head + answer.body
    return head + b"".join(_LENGTH.pack(len(event)) + event for event in answer.events)


def decode_answer(data: bytes) -> CachedAnswer | None:
    """The answer, or None for anything malformed (the caller treats it as a miss)."""
    if len(data) < 2 or data[:1] not in (_JSON, _SSE):
        return None
    end = 2 + data[1]
    content_type = data[2:end].decode("ascii", "replace")
    if data[:1] == _JSON:
        return CachedAnswer(content_type, body=data[end:])
    events: list[bytes] = []
    offset = end
    while offset < len(data):
        if offset + _LENGTH.size > len(data):
            return None
        (length,) = _LENGTH.unpack_from(data, offset)
        offset += _LENGTH.size
        if offset + length > len(data):
            return None
        events.append(data[offset : offset + length])
        offset += length
    return CachedAnswer(content_type, events=tuple(events)) if events else None


class StreamCapture:
    """Collects a stream's chunks for the cache while they are sent; gives up past ``max_bytes``."""

    def __init__(self, content_type: str, max_bytes: int) -> None:
        self.content_type = content_type
        self.max_bytes = max_bytes
        self._chunks: list[bytes] = []
        self._size = 0
        self._usable = True

    def add(self, chunk: bytes) -> None:
        if not self._usable:
            return
        self._size += len(chunk)
        if self._size > self.max_bytes or _has_error_event(chunk):
            self._usable = False
            self._chunks.clear()
            return
        self._chunks.append(chunk)

    def answer(self) -> CachedAnswer | None:
        """The stream as an entry if it finished cleanly with ``[DONE]``, else None."""
        if not self._usable or not self._chunks or not self._chunks[-1].rstrip().endswith(_DONE):
            return None
        return CachedAnswer(self.content_type, events=tuple(self._chunks))


def _has_error_event(chunk: bytes) -> bool:
    for event in chunk.split(b"\n\n"):
        for line in event.splitlines():
            if line.startswith(b"data:") and line[5:].lstrip().startswith(_ERROR_EVENT):
                return True
    return False
