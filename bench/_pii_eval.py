"""The PII half of the guards evaluation: recall and precision per entity type, redaction latency,
and what the stream redactor's hold-back costs in time to first token.

Input rows are JSON lines with ``text`` and ``spans`` as ``[start, end, ENTITY_TYPE]`` (Presidio's
names). A labelled span counts as found when the redaction covers all of its non-space characters,
whatever type the covering region got. A redacted region of type T is correct when it overlaps a
labelled span of type T; regions of other types over a labelled span count against their own
type's precision. Types are reported when the policy asks for them and the file labels them.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench._common import percentile
from gateway.guards.pii import PiiAnalyzer
from gateway.guards.redaction import Redactor, merge
from gateway.guards.settings import PiiSettings
from gateway.guards.stream_redactor import StreamRedactor
from gateway.policy.schema import PiiGuard

# About 1 KB of an assistant's answer with the kinds of data the guard redacts.
ANSWER_1KB = (
    "Thanks for reaching out. I have updated the account for Maria Lopez as requested. Her new e-mail "
    "address is maria.lopez@example.org and the mobile number on file is now +44 7700 900123. The "
    "refund of 42.50 EUR goes back to the card ending in the number 4111 1111 1111 1111 within five "
    "working days; if she prefers a bank transfer instead, we will use the IBAN GB82 WEST 1234 5698 "
    "7654 32 that she confirmed on the phone yesterday. For the tax form we still need her social "
    "security number, which she gave as 078-05-1121 on the earlier call, so please double-check it. "
    "The last login came from 203.0.113.42, which matches her usual location, so there is no sign of "
    "fraud. Order 2023-0045-1187 shipped with version 2.4.1 of the firmware on Tuesday, and the "
    "replacement part (P/N 5521-0098-33) is on back order until next month. You can call our support "
    "line at (415) 555-0132 between 9am and 5pm, Monday to Friday. Let me know if anything else "
    "needs changing on the account and I will take care of it right away. Have a nice day!"
)


def rows(path: Path) -> Iterator[dict[str, Any]]:
    with path.open(encoding="utf-8") as lines:
        for line in lines:
            if line.strip():
                yield json.loads(line)


def evaluate_pii(path: Path, analyzer: PiiAnalyzer, policy: PiiGuard) -> dict[str, Any]:
    """``{"<ENTITY_TYPE>": {"support", "recall", "precision"}, ..., "false_positive_rows": n}``."""
    support: Counter[str] = Counter()
    found: Counter[str] = Counter()
    predicted: Counter[str] = Counter()
    correct: Counter[str] = Counter()
    false_positive_rows = 0
    for row in rows(path):
        text: str = row["text"]
        labels = [(int(start), int(end), str(kind)) for start, end, kind in row.get("spans", [])]
        regions = merge(analyzer.analyze(text, policy))
        covered = [False] * len(text)
        for region in regions:
            covered[region.start : region.end] = [True] * (region.end - region.start)
        for start, end, kind in labels:
            support[kind] += 1
            if all(covered[i] or text[i].isspace() for i in range(start, end)):
                found[kind] += 1
        for region in regions:
            predicted[region.entity_type] += 1
            if any(
                kind == region.entity_type and s < region.end and region.start < e for s, e, kind in labels
            ):
                correct[region.entity_type] += 1
        if not labels and regions:
            false_positive_rows += 1
    report: dict[str, Any] = {}
    for kind in policy.entities:
        if support[kind]:
            report[kind] = {
                "support": support[kind],
                "recall": found[kind] / support[kind],
                "precision": correct[kind] / predicted[kind] if predicted[kind] else 1.0,
                "predicted": predicted[kind],
            }
    report["false_positive_rows"] = false_positive_rows
    return report


def redact_latency_1kb(
    analyzer: PiiAnalyzer | None = None, policy: PiiGuard | None = None, rounds: int = 300
) -> tuple[float, float]:
    """(p50, p99) milliseconds to redact a 1 KB answer as a whole."""
    analyzer = analyzer or PiiAnalyzer(PiiSettings())
    redactor = Redactor(analyzer, policy or PiiGuard())
    redactor.redact(ANSWER_1KB)  # warm caches
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        redactor.redact(ANSWER_1KB)
        times.append((time.perf_counter() - started) * 1000)
    return percentile(times, 50), percentile(times, 99)


def stream_holdback(
    path: Path, analyzer: PiiAnalyzer, policy: PiiGuard, token_chars: int = 4, limit: int = 500
) -> dict[str, Any]:
    """Streams texts in ``token_chars``-character pieces (about one token each) and reports how
    many pieces arrive before the first text is released (the time-to-first-token cost, in
    tokens), the characters held back after each piece, and the analysis time per piece."""
    delays: list[float] = []
    held: list[float] = []
    feed_ms: list[float] = []
    for index, row in enumerate(rows(path)):
        if index >= limit:
            break
        text = row["text"]
        stream = StreamRedactor(Redactor(analyzer, policy))
        first: int | None = None
        pieces = [text[i : i + token_chars] for i in range(0, len(text), token_chars)]
        for number, piece in enumerate(pieces):
            started = time.perf_counter()
            out = stream.feed(piece)
            feed_ms.append((time.perf_counter() - started) * 1000)
            held.append(stream.held)
            if out and first is None:
                first = number
        stream.finish()
        delays.append(float(len(pieces) - 1 if first is None else first))
    return {
        "first_release_after_tokens_p50": percentile(delays, 50),
        "first_release_after_tokens_p90": percentile(delays, 90),
        "first_release_after_tokens_max": max(delays),
        "held_chars_p50": percentile(held, 50),
        "held_chars_p99": percentile(held, 99),
        "held_chars_max": max(held),
        "feed_ms_p50": percentile(feed_ms, 50),
        "feed_ms_p99": percentile(feed_ms, 99),
    }
