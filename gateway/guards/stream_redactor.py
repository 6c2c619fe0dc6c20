"""Redaction of a text that arrives in pieces: nothing is released that whole-text redaction would
have redacted, and the released pieces concatenate to exactly the whole-text result.

Each recognizer is local (see ``recognizers``): a candidate depends only on the text within its
bounded length plus a few characters of cue words on either side. So after every piece the
redactor asks the recognizers where the earliest candidate starts that text still to come could
extend, complete or re-score (``PiiAnalyzer.open_start``); everything before it is final and is
released, redacted, except that a release never cuts through a redacted region. With NER, text is
also held until its sentence (a canonical segment) is complete.

What is held back is what could still become part of a span: usually nothing or the last word
(it could be the start of an e-mail address); while a number is being written, the number and the
24 characters after it (a cue such as "office" may follow); while a key or token streams, all of
it. The bound, ``MAX_HOLD_CHARS``, is the longest span a recognizer can match plus what it reads
after it: about 30,000 characters for a private key block in PEM, 12,300 for a JWT, 650 for an
e-mail address and under 300 for everything else. Analysis reads the held text plus
``CONTEXT_CHARS`` already released, for cue words and so that a span can be seen whole.
"""

from __future__ import annotations

import time
from collections import Counter

from gateway.guards.pii import RECOGNIZERS, PiiAnalyzer, PiiSpan
from gateway.guards.redaction import Redactor, Region, merge, render

CONTEXT_CHARS = 768  # >= the longest cue window plus the longest span of any short recognizer (e-mail)
# Characters kept before the analysed text so that look-behinds see what really precedes it;
# matches that start in them are not taken.
MARGIN = 2
# A piece without a space rarely lets anything go (it continues the last word), so such pieces are
# only looked at once this many characters have come in since the last look.
RECHECK_CHARS = 256
MAX_HOLD_CHARS = max(cls.MAX_LEN + cls.RIGHT for cls in RECOGNIZERS) + RECHECK_CHARS


class StreamRedactor:
    """One per streamed text (per choice). ``feed`` returns what may be released now, ``finish``
    the rest. Not thread-safe; call it from one task at a time (``PiiAnalyzer.run`` is fine)."""

    def __init__(self, redactor: Redactor) -> None:
        self._redactor = redactor
        self._analyzer: PiiAnalyzer = redactor.analyzer
        self._policy = redactor.policy
        self._ner = self._analyzer.uses_ner(self._policy)
        self._buffer = ""  # the text from self._base on
        self._base = 0
        self._released = 0  # absolute position up to which redacted text has been returned
        self._ner_done = 0  # absolute position up to which NER has read whole segments
        self._ner_spans: list[PiiSpan] = []
        self._finished = False
        self._unchecked = 0  # characters received since the last look
        self.counts: Counter[str] = Counter()

    @property
    def held(self) -> int:
        """Characters received but not yet released."""
        return self._base + len(self._buffer) - self._released

    @property
    def released(self) -> int:
        """Characters of the input released so far (redacted in the output)."""
        return self._released

    def feed(self, text: str) -> str:
        if self._finished:
            raise RuntimeError("feed after finish")
        if not text:
            return ""
        self._buffer += text
        self._unchecked += len(text)
        if self._unchecked < RECHECK_CHARS and not any(char.isspace() for char in text):
            return ""  # holding longer than needed is always safe
        self._unchecked = 0
        return self._release(final=False)

    def finish(self) -> str:
        if self._finished:
            return ""
        self._finished = True
        return self._release(final=True)

    def _release(self, *, final: bool) -> str:
        started = time.time_ns()
        try:
            return self._release_checked(final=final)
        finally:
            self._redactor.note_work(started)

    def _release_checked(self, *, final: bool) -> str:
        size = self._base + len(self._buffer)
        if self._ner:
            self._read_segments(final=final)
        limit = size
        if not final:
            low = self._released - self._base
            limit = self._base + self._analyzer.open_start(self._buffer, low, self._policy)
            if self._ner:
                limit = min(limit, self._ner_done)
        if limit <= self._released:
            return ""
        first = self._base + (MARGIN if self._base else 0)
        spans = [
            s
            for s in self._analyzer.pattern_spans(self._buffer, self._policy, self._base)
            if s.start >= first
        ]
        spans += [span for span in self._ner_spans if span.end > self._released]
        regions = [region for region in merge(spans) if region.end > self._released]
        cut = limit
        for region in regions:
            if region.start < cut < region.end:
                cut = region.start  # never cut through a region: hold all of it
        if cut <= self._released:
            return ""
        chosen = [
            Region(max(region.start, self._released), region.end, region.entity_type)
            for region in regions
            if region.end <= cut
        ]
        start = self._released - self._base
        out = render(self._buffer[start : cut - self._base], chosen, self._redactor.operator, self._released)
        counts = Counter(region.entity_type for region in chosen)
        self.counts.update(counts)
        self._redactor.counts.update(counts)
        self._released = cut
        self._trim()
        return out

    def _read_segments(self, *, final: bool) -> None:
        start = self._ner_done - self._base
        for begin, end in self._analyzer.segments(self._buffer, start, final=final):
            segment = self._buffer[begin:end]
            self._ner_spans += self._analyzer.ner_spans(segment, self._policy, self._base + begin)
            self._ner_done = self._base + end

    def _trim(self) -> None:
        """Forget text no later analysis needs: all but CONTEXT_CHARS before the release point (and
        the NER segment in progress), plus MARGIN characters for look-behinds."""
        keep_from = min(self._released - CONTEXT_CHARS, self._ner_done if self._ner else self._released)
        cut = keep_from - MARGIN - self._base
        if cut <= 0:
            return
        self._buffer = self._buffer[cut:]
        self._base += cut
        self._ner_spans = [span for span in self._ner_spans if span.end > self._base]
