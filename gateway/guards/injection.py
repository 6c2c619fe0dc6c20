"""Prompt-injection scanning of every message of a request.

Each message (user, tool results, client-supplied system and assistant history) is normalized; its
detection text and every payload decoded from it go through the signature rules and the classifier;
the calibrator turns that evidence into a ``Score``. The verdict is the highest-scoring message, with
the rule ids, categories and signals of all messages for the audit record. ``sanitize`` returns the
normalized text with the matched attack spans replaced by ``[filtered]``.

Usage (built once at start-up; ``scan`` is synchronous and thread-safe)::

    scanner = InjectionScanner.load(settings.guards.injection)
    verdict = scanner.scan([MessageText(index=i, role=m.role, text=m.text) for i, m in ...])
    if verdict.score >= role.guards.injection.threshold: block / sanitize / flag
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from gateway.guards.classifier import InjectionModel, load_model
from gateway.guards.normalize import Normalized, normalize
from gateway.guards.rules import RuleHit, RuleSet, load_rules
from gateway.guards.score import Evidence, Score, make_score
from gateway.guards.settings import InjectionSettings

FILTERED = "[filtered]"
PACKAGED_MODEL = "data/injection_model.npz"
_HIDDEN_SIGNALS = frozenset({"invisible_chars", "bidi_controls", "tag_chars", "control_chars"})


class GuardInputTooLarge(ValueError):
    """The request exceeds the scanner's message-count or length limits (nothing is scanned partially)."""


@dataclass(frozen=True, slots=True)
class MessageText:
    index: int
    role: str
    text: str


@dataclass(frozen=True, slots=True)
class InjectionVerdict:
    score: Score
    rule_ids: tuple[str, ...]
    categories: tuple[str, ...]
    signals: tuple[str, ...]
    message_index: int | None  # the highest-scoring message; None when there were no messages
    message_scores: tuple[Score, ...] = ()  # one per message, in the order given


@dataclass(frozen=True, slots=True)
class Analysis:
    """Rule evidence about one text, before the classifier: also what the training script consumes."""

    normalized: Normalized
    hits: tuple[RuleHit, ...]
    decoded_hits: tuple[RuleHit, ...]
    segments: tuple[str, ...]  # detection text first, then decoded payloads

    @property
    def classifier_text(self) -> str:
        """What the classifier reads: the detection text followed by every decoded payload."""
        return "\n".join(self.segments)

    def evidence(self, classifier_logit: float) -> Evidence:
        instruction = [h.rule.weight for h in self.hits if not h.mention]
        mention = [h.rule.weight for h in self.hits if h.mention]
        # Quoted mentions count only through max_mention_weight, so the calibration can discount them.
        rules = {h.rule.id: h.rule for h in (*self.hits, *self.decoded_hits) if not h.mention}
        signals = self.normalized.signals
        return Evidence(
            max_rule_weight=max(instruction, default=0.0),
            max_mention_weight=max(mention, default=0.0),
            rule_weight_sum=sum(rule.weight for rule in rules.values()),
            categories=len({rule.category for rule in rules.values()}),
            decoded_rule_weight=max((h.rule.weight for h in self.decoded_hits), default=0.0),
            classifier_logit=classifier_logit,
            hidden_chars=not signals.isdisjoint(_HIDDEN_SIGNALS),
            confusables="confusables" in signals,
            encoded_payload="encoded_payload" in signals,
            spaced_letters="spaced_letters" in signals,
        )


@dataclass(frozen=True, slots=True)
class _MessageResult:
    score: Score
    rule_ids: tuple[str, ...]
    categories: tuple[str, ...]
    signals: frozenset[str]


class InjectionScanner:
    def __init__(self, rules: RuleSet, model: InjectionModel, settings: InjectionSettings) -> None:
        self.rules = rules
        self.model = model
        self.settings = settings
        self._cache: OrderedDict[bytes, _MessageResult] = OrderedDict()
        self._lock = threading.Lock()

    @classmethod
    def load(cls, settings: InjectionSettings) -> InjectionScanner:
        """Rules from ``settings.rules_path``, weights from ``settings.model_path`` or the packaged ones."""
        rules = load_rules(settings.rules_path)
        if settings.model_path is not None:
            model = load_model(settings.model_path)
        else:
            with resources.as_file(resources.files("gateway.guards") / PACKAGED_MODEL) as path:
                model = load_model(Path(path))
        return cls(rules, model, settings)

    def scan(self, messages: Sequence[MessageText]) -> InjectionVerdict:
        """Score every message; raises ``GuardInputTooLarge`` beyond the configured limits."""
        self._check_limits(messages)
        results = [self._scan_cached(message.text) for message in messages]
        if not results:
            return InjectionVerdict(make_score(0.0), (), (), (), None)
        best = max(range(len(results)), key=lambda i: results[i].score)
        return InjectionVerdict(
            score=results[best].score,
            rule_ids=_unique(rule for result in results for rule in result.rule_ids),
            categories=_unique(category for result in results for category in result.categories),
            signals=tuple(sorted(set().union(*(result.signals for result in results)))),
            message_index=messages[best].index,
            message_scores=tuple(result.score for result in results),
        )

    def score_text(self, text: str) -> Score:
        """The score of one text as a single message (evaluation and tests)."""
        return self._scan_one(text).score

    def sanitize(self, text: str) -> str:
        """The normalized text with every matched attack span, and every decoded payload that holds
        one, replaced by ``[filtered]``. Injections only the classifier sees cannot be located."""
        normalized = normalize(text)
        spans = [normalized.text_span(s, e) for s, e in self.rules.all_spans(normalized.detection_text)]
        spans += [
            (payload.start, payload.end)
            for payload in normalized.decoded
            if payload.end > payload.start and self.rules.first_hits(payload.text)
        ]
        result = normalized.text
        for start, end in reversed(_merge(spans)):
            result = result[:start] + FILTERED + result[end:]
        return result

    def _scan_one(self, text: str) -> _MessageResult:
        analysis = analyze(self.rules, text)
        logit = self.model.classifier.logit(analysis.classifier_text)
        score = self.model.calibrator.score(analysis.evidence(logit))
        hits = (*analysis.hits, *analysis.decoded_hits)
        return _MessageResult(
            score=score,
            rule_ids=_unique(hit.rule.id for hit in hits),
            categories=_unique(hit.rule.category for hit in hits),
            signals=analysis.normalized.signals,
        )

    def _scan_cached(self, text: str) -> _MessageResult:
        # Chat clients resend the whole history every turn; remember results by digest, never text.
        if self.settings.cache_entries == 0:
            return self._scan_one(text)
        key = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()
        with self._lock:
            cached = self._cache.get(key)
            if cached is not None:
                self._cache.move_to_end(key)
                return cached
        result = self._scan_one(text)
        with self._lock:
            self._cache[key] = result
            if len(self._cache) > self.settings.cache_entries:
                self._cache.popitem(last=False)
        return result

    def _check_limits(self, messages: Sequence[MessageText]) -> None:
        limits = self.settings
        if len(messages) > limits.max_messages:
            raise GuardInputTooLarge(f"too many messages to scan: the limit is {limits.max_messages}")
        total = 0
        for message in messages:
            if len(message.text) > limits.max_message_chars:
                raise GuardInputTooLarge(
                    f"message {message.index} is too long to scan: the limit is "
                    f"{limits.max_message_chars} characters"
                )
            total += len(message.text)
        if total > limits.max_total_chars:
            raise GuardInputTooLarge(
                f"the messages are too long to scan: the limit is {limits.max_total_chars}"
            )


def analyze(rules: RuleSet, text: str) -> Analysis:
    """Normalize ``text`` and run the rules over its detection text and every decoded payload."""
    normalized = normalize(text)
    hits = rules.first_hits(normalized.detection_text)
    decoded = [hit for payload in normalized.decoded for hit in rules.first_hits(payload.text)]
    segments = (normalized.detection_text, *(payload.text for payload in normalized.decoded))
    return Analysis(normalized, tuple(hits), tuple(decoded), segments)


def _unique(items: Iterable[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(items))


def _merge(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    merged: list[tuple[int, int]] = []
    for start, end in sorted(spans):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(end, merged[-1][1]))
        else:
            merged.append((start, end))
    return merged
