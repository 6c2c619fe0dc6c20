"""Presidio, imported the way the gateway needs it: offline, and without the model stacks it never uses.

Presidio imports Hugging Face transformers (and with it torch) at import time whenever they are
installed, for an NLP engine the gateway does not use; spaCy's thinc does the same with torch. In an
environment that also holds the worker (development, tests) that made the gateway load torch and
cost seconds at every start. Both are optional to Presidio and thinc, so they are hidden while
Presidio loads: the imports fail, and each library falls back to what it does without them. Every
gateway module reaches Presidio through this one.
"""

from __future__ import annotations

import os
import sys

# Presidio's default URL and e-mail recognizers build a tldextract extractor at import time; an empty
# list keeps it on the bundled public suffix snapshot instead of fetching one.
os.environ["TLDEXTRACT_PUBLIC_SUFFIX_LIST_URLS"] = ""

UNUSED_OPTIONAL_MODULES = ("transformers", "torch")

_hidden = [name for name in UNUSED_OPTIONAL_MODULES if name not in sys.modules]
for _name in _hidden:
    sys.modules[_name] = None  # type: ignore[assignment]  # makes `import` raise ImportError
try:
    from presidio_analyzer import AnalyzerEngine, LocalRecognizer, RecognizerRegistry, RecognizerResult
    from presidio_analyzer.context_aware_enhancers import ContextAwareEnhancer
    from presidio_analyzer.nlp_engine import NlpEngineProvider, NoOpNlpEngine
finally:
    for _name in _hidden:
        if sys.modules.get(_name, False) is None:
            del sys.modules[_name]  # later imports elsewhere in the process work as usual

__all__ = [
    "AnalyzerEngine",
    "ContextAwareEnhancer",
    "LocalRecognizer",
    "NlpEngineProvider",
    "NoOpNlpEngine",
    "RecognizerRegistry",
    "RecognizerResult",
]
