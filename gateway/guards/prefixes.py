"""Literal prefixes of a regular expression: strings one of which starts every match.

Used to skip patterns whose prefixes do not occur in a text. Built on the standard library's own
regex parser; anything it cannot analyse yields ``None`` (the pattern then always runs), so this
can only make matching faster, never change what matches.
"""

from __future__ import annotations

from typing import Any

MAX_PREFIXES = 96
ENOUGH = 8  # a prefix this long is selective enough; longer ones only multiply the set

try:  # the parser behind re.compile; private, so every failure falls back to "always run"
    from re import _parser as _sre_parser  # type: ignore[attr-defined,unused-ignore]
except ImportError:  # pragma: no cover - other Python versions
    _sre_parser = None


def literal_prefixes(pattern: str) -> frozenset[str] | None:
    """The set of literals every match starts with, or ``None`` when there is no useful set."""
    if _sre_parser is None:
        return None
    try:
        tree = _sre_parser.parse(pattern)
        prefixes, _ = _sequence(list(tree))
    except Exception:  # noqa: BLE001 - an unexpected parse tree only disables the shortcut
        return None
    if not prefixes or any(_too_short(prefix) for prefix in prefixes):
        return None
    # A necessary prefix stays necessary when cut short; "ignor" covers "ignore all" and "ignoring".
    ordered = sorted({_cut(prefix) for prefix in prefixes}, key=len)
    kept: list[str] = []
    for prefix in ordered:
        if not any(prefix.startswith(shorter) for shorter in kept):
            kept.append(prefix)
    return frozenset(kept)


def _too_short(prefix: str) -> bool:
    """ASCII letters and digits need three characters to be selective; punctuation (``![``, ``<|``)
    and other scripts (``忽略``) two. Shorter prefixes could not be indexed (see ``RuleSet``)."""
    if not prefix.isascii():
        return len(prefix) < 2
    return len(prefix) < 2 or (len(prefix) < 3 and prefix.isalnum())


def _long_enough(prefix: str) -> bool:
    return len(prefix) >= (ENOUGH if prefix.isascii() else 3)


def _cut(prefix: str) -> str:
    return prefix[:ENOUGH] if prefix.isascii() else prefix[:3]


def _sequence(items: list[tuple[Any, Any]]) -> tuple[set[str], bool]:
    """(prefixes, complete). Open prefixes are the whole sequence so far and may grow with what
    follows; closed ones stop (something not literal follows, or they are long enough). The result
    is complete when every prefix is still open, so a caller may append what comes after it."""
    open_: set[str] = {""}
    closed: set[str] = set()
    for op, arg in items:
        name = str(op)
        if name in ("AT", "ASSERT", "ASSERT_NOT"):
            continue  # zero width
        if name == "LITERAL":
            choices_open, choices_closed = {chr(arg)}, set[str]()
        elif name == "IN" and len(arg) <= 4 and all(str(kind) == "LITERAL" for kind, _ in arg):
            choices_open, choices_closed = {chr(code) for _, code in arg}, set()
        elif name in ("SUBPATTERN", "BRANCH"):
            alternatives = [arg[-1]] if name == "SUBPATTERN" else arg[1]
            choices_open, choices_closed = set(), set()
            for alternative in alternatives:
                prefixes, complete = _sequence(list(alternative))
                (choices_open if complete else choices_closed).update(prefixes)
        else:
            return open_ | closed, False
        grown_open = {prefix + choice for prefix in open_ for choice in choices_open}
        grown_closed = {prefix + choice for prefix in open_ for choice in choices_closed}
        if len(grown_open) + len(grown_closed) + len(closed) > MAX_PREFIXES:
            return open_ | closed, False
        closed |= grown_closed | {prefix for prefix in grown_open if _long_enough(prefix)}
        open_ = {prefix for prefix in grown_open if not _long_enough(prefix)}
        if not open_:
            return closed, False
    return open_ | closed, not closed
