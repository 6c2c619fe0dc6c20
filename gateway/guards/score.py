"""The guard score, defined once: a float in [0, 1], and the calibration that produces it.

``Score`` is what every guard reports and every policy threshold compares against (higher means more
likely an attack). ``Calibrator`` turns the evidence about one message into a ``Score``: a noisy-OR of
two fitted logistic models, one on the rule hits and normalization signals, one on the classifier's
logit. Either kind of evidence alone can flag a message, so a confident "looks benign" from the
classifier never cancels a strong signature match (an attack hidden in a long benign document).
The coefficients are fitted by maximum likelihood in scripts/train_injection_classifier.py.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NewType

Score = NewType("Score", float)

# Evidence about one message, in the order the calibrator's coefficients use.
EVIDENCE_FEATURES: tuple[str, ...] = (
    "max_rule_weight",  # strongest rule hit that reads as an instruction
    "max_mention_weight",  # strongest rule hit that reads as quoted or discussed
    "rule_weight_sum",  # all distinct rules, capped
    "categories",  # distinct rule categories hit, capped
    "decoded_rule_weight",  # strongest rule hit inside a decoded payload (base64, tags, ...)
    "classifier_logit",  # highest over the message's chunks and payloads, clipped
    "hidden_chars",  # zero-width, bidi-control, tag or control characters were removed
    "confusables",  # look-alike letters disguised Latin words
    "encoded_payload",  # readable text was decoded from base64, hex or escapes
    "spaced_letters",  # words written letter by letter
)
CLASSIFIER_FEATURE = EVIDENCE_FEATURES.index("classifier_logit")
RULE_SIDE = len(EVIDENCE_FEATURES) - 1
RULE_SUM_CAP = 3.0
CATEGORY_CAP = 3.0
LOGIT_CLIP = 12.0


def make_score(value: float) -> Score:
    """A ``Score`` from a float, refusing anything outside [0, 1] (and NaN)."""
    if not 0.0 <= value <= 1.0:  # also false for NaN
        raise ValueError(f"a score must be within [0, 1], got {value!r}")
    return Score(float(value))


def sigmoid(value: float) -> float:
    if value >= 0:
        return 1.0 / (1.0 + math.exp(-value))
    exp = math.exp(value)
    return exp / (1.0 + exp)


@dataclass(frozen=True, slots=True)
class Evidence:
    max_rule_weight: float = 0.0
    max_mention_weight: float = 0.0
    rule_weight_sum: float = 0.0
    categories: int = 0
    decoded_rule_weight: float = 0.0
    classifier_logit: float = 0.0
    hidden_chars: bool = False
    confusables: bool = False
    encoded_payload: bool = False
    spaced_letters: bool = False

    def vector(self) -> tuple[float, ...]:
        return (
            self.max_rule_weight,
            self.max_mention_weight,
            min(self.rule_weight_sum, RULE_SUM_CAP),
            min(float(self.categories), CATEGORY_CAP),
            self.decoded_rule_weight,
            max(-LOGIT_CLIP, min(LOGIT_CLIP, self.classifier_logit)),
            float(self.hidden_chars),
            float(self.confusables),
            float(self.encoded_payload),
            float(self.spaced_letters),
        )


@dataclass(frozen=True, slots=True)
class Calibrator:
    """``1 - (1 - sigmoid(rule_intercept + rule_coefficients . rule_evidence))
    * (1 - sigmoid(classifier_intercept + classifier_coefficient * logit))``."""

    rule_intercept: float
    rule_coefficients: tuple[float, ...]
    classifier_intercept: float
    classifier_coefficient: float

    def __post_init__(self) -> None:
        if len(self.rule_coefficients) != RULE_SIDE:
            raise ValueError(
                f"calibration has {len(self.rule_coefficients)} rule coefficients, expected {RULE_SIDE}"
            )

    @classmethod
    def from_parameters(cls, values: Sequence[float]) -> Calibrator:
        """From the flat form stored with the weights (see ``parameters``)."""
        if len(values) != RULE_SIDE + 3:
            raise ValueError(f"calibration has {len(values)} parameters, expected {RULE_SIDE + 3}")
        return cls(values[0], tuple(values[1 : RULE_SIDE + 1]), values[-2], values[-1])

    def parameters(self) -> tuple[float, ...]:
        return (
            self.rule_intercept,
            *self.rule_coefficients,
            self.classifier_intercept,
            self.classifier_coefficient,
        )

    def score(self, evidence: Evidence) -> Score:
        return self.score_vector(evidence.vector())

    def score_vector(self, vector: Sequence[float]) -> Score:
        rule_side = [x for i, x in enumerate(vector) if i != CLASSIFIER_FEATURE]
        z_rules = self.rule_intercept + sum(
            c * x for c, x in zip(self.rule_coefficients, rule_side, strict=True)
        )
        z_classifier = self.classifier_intercept + self.classifier_coefficient * vector[CLASSIFIER_FEATURE]
        miss = (1.0 - sigmoid(z_rules)) * (1.0 - sigmoid(z_classifier))
        return make_score(min(1.0, max(0.0, 1.0 - miss)))
