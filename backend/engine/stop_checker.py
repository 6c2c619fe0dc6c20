"""Stop strings over streamed text: never emit a stop string, nor anything after it, nor anything early.

Text arrives in deltas that may split a stop string anywhere. The matcher holds back the longest suffix
of what it has seen that is still a proper prefix of some stop string — exactly the text that could yet
turn out to be part of one — and releases the rest.

The output stops at the first *completed* occurrence: the one that ends earliest (ties: the longest).
This is what a reader who checks after every character sees, so the result does not depend on how the
text was split. It differs from "the occurrence that starts earliest" only when one stop string contains
another, e.g. stops ``["abcd", "bc"]`` on ``"abcd"`` stop at ``"bc"`` (output ``"a"``).
"""

from __future__ import annotations

from collections.abc import Sequence


class StopStringMatcher:
    def __init__(self, stop: Sequence[str]) -> None:
        if any(not s for s in stop):
            raise ValueError("stop strings must not be empty")
        self._stop = tuple(dict.fromkeys(stop))
        self._held = ""
        self._hit = False

    @property
    def hit(self) -> bool:
        return self._hit

    def feed(self, text_delta: str) -> tuple[str, bool]:
        """The text that is safe to emit now, and whether a stop string was completed."""
        if self._hit:
            return "", True
        if not self._stop:
            return text_delta, False
        text = self._held + text_delta
        end = _first_completed(text, self._stop)
        if end is not None:
            self._hit = True
            self._held = ""
            return text[:end], True
        start = _held_start(text, self._stop)
        self._held = text[start:]
        return text[:start], False

    def flush(self) -> str:
        """The held-back text, once the stream is over without reaching a stop string."""
        held, self._held = self._held, ""
        return "" if self._hit else held


def _first_completed(text: str, stop: Sequence[str]) -> int | None:
    """Where the earliest-ending stop string occurrence in ``text`` starts, or None."""
    best: tuple[int, int] | None = None  # (end, -length) of the best occurrence so far
    for s in stop:
        start = text.find(s)
        if start != -1 and (best is None or (start + len(s), -len(s)) < best):
            best = (start + len(s), -len(s))
    return None if best is None else best[0] + best[1]


def _held_start(text: str, stop: Sequence[str]) -> int:
    """Start of the longest suffix of ``text`` that is a proper prefix of some stop string."""
    start = len(text)
    for s in stop:
        # Only the last len(s) - 1 characters can begin an unfinished occurrence of s.
        i = text.find(s[0], max(0, len(text) - len(s) + 1))
        while i != -1 and i < start:
            if s.startswith(text[i:]):
                start = i
                break
            i = text.find(s[0], i + 1)
    return start
