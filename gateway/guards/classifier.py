"""The statistical half of injection detection: hashed character n-grams and a linear model.

Features are language-agnostic: character n-grams and words of the detection text, hashed into
``2**bits`` buckets with a position-independent polynomial hash computed for all n-grams at once in
numpy (no per-character Python loop), binary and L2-normalized. Long texts are cut into overlapping
chunks and the highest logit wins, so an attack at the end of a long document is seen as clearly as
one at the start and nothing is silently truncated. Weights ship in gateway/guards/data/ (float16,
written by scripts/train_injection_classifier.py together with the calibration).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from gateway.config import ConfigError
from gateway.guards.score import EVIDENCE_FEATURES, Calibrator

MODEL_FORMAT = 1
_P = 0x100000001B3  # odd, so it has an inverse modulo 2**64
_P_INV = pow(_P, -1, 1 << 64)
_MASK = (1 << 64) - 1
_SALT_WORD, _SALT_BIGRAM = 0x9E3779B97F4A7C15, 0xC2B2AE3D27D4EB4F
_SPACE = re.compile(r"\s+")
_DIGITS = str.maketrans("123456789", "000000000")

IndexArray = npt.NDArray[np.int64]


@dataclass(frozen=True, slots=True)
class FeatureSpec:
    bits: int = 17
    ngrams: tuple[int, ...] = (3, 4, 5, 6, 7)
    words: bool = True
    chunk_chars: int = 1024
    chunk_overlap: int = 256

    def to_json(self) -> dict[str, Any]:
        return {
            "bits": self.bits,
            "ngrams": list(self.ngrams),
            "words": self.words,
            "chunk_chars": self.chunk_chars,
            "chunk_overlap": self.chunk_overlap,
        }


@dataclass(frozen=True)
class Featurizer:
    """Text -> sorted unique bucket indices, per chunk."""

    spec: FeatureSpec
    _pow: npt.NDArray[np.uint64] = field(init=False, repr=False)
    _inv_pow: npt.NDArray[np.uint64] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        size = self.spec.chunk_chars + 2
        pows, invs = [1] * size, [1] * size
        for i in range(1, size):
            pows[i] = pows[i - 1] * _P & _MASK
            invs[i] = invs[i - 1] * _P_INV & _MASK
        object.__setattr__(self, "_pow", np.array(pows, dtype=np.uint64))
        object.__setattr__(self, "_inv_pow", np.array(invs, dtype=np.uint64))

    def prepare(self, detection_text: str) -> str:
        return _SPACE.sub(" ", detection_text).strip().translate(_DIGITS)

    def chunks(self, prepared: str) -> list[str]:
        size, step = self.spec.chunk_chars, self.spec.chunk_chars - self.spec.chunk_overlap
        if len(prepared) <= size:
            return [prepared]
        starts = range(0, len(prepared) - self.spec.chunk_overlap, step)
        return [prepared[start : start + size] for start in starts]

    def buckets(self, chunk: str) -> IndexArray:
        """Unique feature buckets of one chunk (at most ``chunk_chars`` characters)."""
        padded = f" {chunk} "
        codes = np.frombuffer(padded.encode("utf-32-le"), dtype=np.uint32).astype(np.uint64)
        length = len(codes)
        prefix = np.zeros(length + 1, dtype=np.uint64)
        np.cumsum(codes * self._inv_pow[:length], out=prefix[1:])
        parts = []
        for n in self.spec.ngrams:
            if length >= n:
                starts = np.arange(length - n + 1)
                parts.append(self._hash(prefix, starts, starts + n) ^ np.uint64(n))
        if self.spec.words:
            word = ((codes >= 97) & (codes <= 122)) | ((codes >= 48) & (codes <= 57)) | (codes >= 0xC0)
            starts = np.flatnonzero(word[1:] & ~word[:-1]) + 1
            ends = np.flatnonzero(word[:-1] & ~word[1:]) + 1
            if len(starts):
                parts.append(self._hash(prefix, starts, ends) ^ np.uint64(_SALT_WORD))
                parts.append(self._hash(prefix, starts[:-1], ends[1:]) ^ np.uint64(_SALT_BIGRAM))
        if not parts:
            return np.zeros(0, dtype=np.int64)
        buckets = np.sort(self._mix(np.concatenate(parts)).astype(np.int64))
        keep = np.empty(len(buckets), dtype=bool)  # unique by sort and compare: cheaper than np.unique
        keep[0] = True
        np.not_equal(buckets[1:], buckets[:-1], out=keep[1:])
        unique: IndexArray = buckets[keep]
        return unique

    def _hash(
        self, prefix: npt.NDArray[np.uint64], starts: IndexArray, ends: IndexArray
    ) -> npt.NDArray[np.uint64]:
        # sum c[j] * P**(end-1-j) for j in [start, end): the same value wherever the n-gram occurs
        result: npt.NDArray[np.uint64] = (prefix[ends] - prefix[starts]) * self._pow[ends - 1]
        return result

    def _mix(self, hashes: npt.NDArray[np.uint64]) -> npt.NDArray[np.uint64]:
        x = hashes.copy()
        x ^= x >> np.uint64(33)
        x *= np.uint64(0xFF51AFD7ED558CCD)
        x ^= x >> np.uint64(33)
        x *= np.uint64(0xC4CEB9FE1A85EC53)
        x ^= x >> np.uint64(33)
        shifted: npt.NDArray[np.uint64] = x >> np.uint64(64 - self.spec.bits)
        return shifted


@dataclass(frozen=True)
class Classifier:
    featurizer: Featurizer
    weights: npt.NDArray[np.float32]
    bias: float

    def logit(self, detection_text: str) -> float:
        """The highest logit over the chunks of ``detection_text``."""
        prepared = self.featurizer.prepare(detection_text)
        best = -np.inf
        for chunk in self.featurizer.chunks(prepared):
            best = max(best, self.chunk_logit(self.featurizer.buckets(chunk)))
        return float(best)

    def chunk_logit(self, buckets: IndexArray) -> float:
        if len(buckets) == 0:
            return self.bias
        return self.bias + float(self.weights[buckets].sum()) / float(np.sqrt(len(buckets)))


@dataclass(frozen=True)
class InjectionModel:
    classifier: Classifier
    calibrator: Calibrator
    meta: dict[str, Any]


def save_model(path: Path, model: InjectionModel) -> None:
    spec = model.classifier.featurizer.spec
    meta = {**model.meta, "format": MODEL_FORMAT, "features": spec.to_json(), "evidence": EVIDENCE_FEATURES}
    with path.open("wb") as handle:
        np.savez_compressed(
            handle,
            weights=model.classifier.weights.astype(np.float16),
            bias=np.array([model.classifier.bias], dtype=np.float32),
            calibration=np.array(model.calibrator.parameters(), dtype=np.float64),
            meta=np.array(json.dumps(meta, sort_keys=True)),
        )


def load_model(path: Path) -> InjectionModel:
    """Read weights and calibration; ``ConfigError`` if the file is missing, damaged or out of date."""
    try:
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(str(data["meta"]))
            weights = data["weights"].astype(np.float32)
            bias = float(data["bias"][0])
            calibration = [float(v) for v in data["calibration"]]
    except (OSError, KeyError, ValueError) as exc:
        raise ConfigError(f"{path}: cannot read the injection model ({type(exc).__name__})") from None
    if meta.get("format") != MODEL_FORMAT or tuple(meta.get("evidence", ())) != EVIDENCE_FEATURES:
        raise ConfigError(f"{path}: the injection model is from another version; retrain it")
    features = meta["features"]
    spec = FeatureSpec(
        bits=int(features["bits"]),
        ngrams=tuple(int(n) for n in features["ngrams"]),
        words=bool(features["words"]),
        chunk_chars=int(features["chunk_chars"]),
        chunk_overlap=int(features["chunk_overlap"]),
    )
    if weights.shape != (1 << spec.bits,):
        raise ConfigError(f"{path}: the injection model's weights do not match its feature size")
    classifier = Classifier(Featurizer(spec), weights, bias)
    try:
        calibrator = Calibrator.from_parameters(calibration)
    except ValueError:
        raise ConfigError(f"{path}: the injection model's calibration does not match this version") from None
    return InjectionModel(classifier, calibrator, meta)
