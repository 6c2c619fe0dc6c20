"""Which closed segments retention may delete: only those whose every record is older than the cutoff.

A segment's last record is older than the moment the next segment was created, so segment k may go
when segment k + 1 was created before the cutoff. Deletion runs from the oldest segment up and stops
at the first one that must stay, so the log never gets a hole; the open segment always stays.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

from gateway.audit.format import FormatError, SegmentHeader, records_path

_MAX_HEADER_BYTES = 64 * 1024


def segment_created(directory: Path, index: int) -> float:
    """The creation time in a segment's header; infinity (never expires) when it cannot be read."""
    try:
        with records_path(directory, index).open("rb") as handle:
            line = handle.readline(_MAX_HEADER_BYTES).rstrip(b"\n")
        return SegmentHeader.decode(line).created
    except (OSError, FormatError):
        return math.inf


def expired_segments(created: Mapping[int, float], active: int, cutoff: float) -> list[int]:
    """Indexes to delete, oldest first: closed, contiguous from the oldest, followed by a segment
    created before ``cutoff`` (unix seconds)."""
    doomed: list[int] = []
    for index in sorted(created):
        successor = created.get(index + 1)
        if index >= active or successor is None or successor >= cutoff:
            break
        doomed.append(index)
    return doomed
