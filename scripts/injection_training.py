"""Training the injection classifier and its calibration, in numpy (no scikit-learn, no scipy).

``train_model`` fits a logistic regression on hashed n-gram features of chunks (L-BFGS, L2), then
the calibrator: a small logistic regression on each row's evidence (rule weights, signals, and the
classifier logit taken out-of-fold, so the calibrator learns how far the classifier can be trusted on
text it has not seen). Everything is seeded; the same inputs give the same weights.
"""

from __future__ import annotations

import json
import random
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from gateway.guards.classifier import Classifier, FeatureSpec, Featurizer, InjectionModel
from gateway.guards.injection import Analysis, analyze
from gateway.guards.rules import RuleSet
from gateway.guards.score import CLASSIFIER_FEATURE, EVIDENCE_FEATURES, RULE_SIDE, Calibrator
from scripts.injection_synth import generate

Floats = npt.NDArray[np.float64]
SEED = 20251123
SYNTHETIC_ATTACKS = 2400
SYNTHETIC_BENIGN = 2400
SYNTHETIC_WEIGHT = 0.25  # templated rows are near-duplicates of one another; weigh them lower
L2_CLASSIFIER = 1e-5
L2_CALIBRATOR = 1e-4  # measured: same CV as 1e-3, better on held-out synthetic rows
INNER_FOLDS = 3
MIN_BENIGN_PREFIX = 20  # characters: shorter benign texts ("hi", "thanks") prefix too much by chance


@dataclass(frozen=True)
class Row:
    text: str
    label: int
    weight: float = 1.0
    group: str | None = None  # rows of one group (a synthetic template) always share a fold


def read_jsonl(path: Path) -> list[Row]:
    rows = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            record = json.loads(line)
            if not isinstance(record.get("text"), str) or record.get("label") not in (0, 1):
                raise ValueError(f"{path} line {number}: expected a string 'text' and a 0/1 'label'")
            rows.append(Row(record["text"], int(record["label"])))
    return rows


def synthetic_rows(seed: int = SEED, split: str | None = None) -> list[Row]:
    """The template-generated rows every model is trained with (see scripts/injection_synth.py)."""
    generated = generate(seed, SYNTHETIC_ATTACKS, SYNTHETIC_BENIGN, split)
    return [Row(row.text, row.label, SYNTHETIC_WEIGHT, row.group) for row in generated]


def group_folds(rows: Sequence[Row], folds: int, seed: int) -> list[int]:
    """Folds for out-of-fold scoring: stratified for ungrouped rows, by group for the others, so a
    classifier is never scored on a near-duplicate of a row it was trained on."""
    assignment = stratified_folds([row.label for row in rows], folds, seed)
    for index, row in enumerate(rows):
        if row.group is not None:
            assignment[index] = zlib.crc32(f"{seed}:{row.group}".encode()) % folds
    return assignment


def stratified_folds(labels: Sequence[int], folds: int, seed: int) -> list[int]:
    """A fold number for every row, classes spread evenly, shuffled with ``seed``."""
    rng = random.Random(seed)  # noqa: S311 - reproducible folds, not secrets
    assignment = [0] * len(labels)
    for label in sorted(set(labels)):
        members = [i for i, value in enumerate(labels) if value == label]
        rng.shuffle(members)
        for position, index in enumerate(members):
            assignment[index] = position % folds
    return assignment


@dataclass
class _Matrix:
    """Rows of binary hashed features, L2-normalized (CSR without scipy)."""

    indices: npt.NDArray[np.int64]
    values: npt.NDArray[np.float64]
    rows: npt.NDArray[np.int64]  # row id of each stored value
    n_rows: int

    def dot(self, w: Floats) -> Floats:
        result: Floats = np.bincount(
            self.rows, weights=self.values * w[self.indices], minlength=self.n_rows
        ).astype(np.float64, copy=False)
        return result

    def tdot(self, r: Floats, size: int) -> Floats:
        result: Floats = np.bincount(self.indices, weights=self.values * r[self.rows], minlength=size).astype(
            np.float64, copy=False
        )
        return result


def _chunk_rows(featurizer: Featurizer, text: str, label: int) -> list[str]:
    chunks = featurizer.chunks(featurizer.prepare(text))
    if label == 1 and len(chunks) > 2:
        # Long attacks carry the attack at the start (jailbreak preambles) or the end (documents);
        # middle chunks of a long document are mostly not the attack, so they are not taught as one.
        return [chunks[0], chunks[-1]]
    return chunks


def _without_benign_prefixes(
    featurizer: Featurizer, texts: Sequence[str], labels: Sequence[int]
) -> list[str]:
    """Attacks that begin with a whole benign training text are taught on what follows it.

    An injection appended to an ordinary request ("<question>? Ignore ... and ...") would otherwise
    teach the classifier that the request itself is an attack, and the same request sent alone would
    then be flagged. Only texts of the training rows are compared, so cross-validation stays honest.
    """
    prepared = [featurizer.prepare(text) for text in texts]
    by_start: dict[str, list[str]] = {}
    for text, label in zip(prepared, labels, strict=True):
        if label == 0 and len(text) >= MIN_BENIGN_PREFIX:
            by_start.setdefault(text[:MIN_BENIGN_PREFIX], []).append(text)
    result = []
    for text, label in zip(prepared, labels, strict=True):
        prefixes = by_start.get(text[:MIN_BENIGN_PREFIX], []) if label == 1 else []
        matched = max((b for b in prefixes if text.startswith(b)), key=len, default="")
        rest = text[len(matched) :].strip()
        result.append(rest if matched and len(rest) >= MIN_BENIGN_PREFIX // 2 else text)
    return result


def _matrix(featurizer: Featurizer, chunk_lists: Sequence[list[str]]) -> tuple[_Matrix, list[int]]:
    """Feature rows for every chunk, and the owning example of each row."""
    indices, values, rows, owners = [], [], [], []
    row = 0
    for example, chunks in enumerate(chunk_lists):
        for chunk in chunks:
            buckets = featurizer.buckets(chunk)
            indices.append(buckets)
            values.append(np.full(len(buckets), 1.0 / np.sqrt(max(len(buckets), 1))))
            rows.append(np.full(len(buckets), row, dtype=np.int64))
            owners.append(example)
            row += 1
    return _Matrix(np.concatenate(indices), np.concatenate(values), np.concatenate(rows), row), owners


def fit_logistic(
    matrix: _Matrix, y: Floats, weight: Floats, size: int, l2: float, max_iter: int = 300
) -> tuple[Floats, float]:
    """Weighted L2 logistic regression by L-BFGS; returns (weights, bias)."""
    total = float(weight.sum())

    def objective(params: Floats) -> tuple[float, Floats]:
        w, b = params[:-1], params[-1]
        z = matrix.dot(w) + b
        loss = float(np.sum(weight * (np.logaddexp(0.0, z) - y * z)) / total + 0.5 * l2 * float(w @ w))
        residual = weight * (_sigmoid(z) - y) / total
        grad = np.empty_like(params)
        grad[:-1] = matrix.tdot(residual, size) + l2 * w
        grad[-1] = residual.sum()
        return loss, grad

    params = _lbfgs(objective, np.zeros(size + 1), max_iter)
    return params[:-1], float(params[-1])


def fit_calibrator(features: Floats, y: Floats, weight: Floats, l2: float = L2_CALIBRATOR) -> Calibrator:
    """Maximum-likelihood fit of the noisy-OR calibration (see ``gateway.guards.score``).

    Rule-side coefficients are kept non-negative (more or stronger evidence never lowers the score),
    except for quoted mentions, which may count against an attack.
    """
    rule_x = np.delete(features, CLASSIFIER_FEATURE, axis=1)
    logit = features[:, CLASSIFIER_FEATURE]
    free = np.ones(RULE_SIDE, dtype=bool)
    free[EVIDENCE_FEATURES.index("max_mention_weight")] = False  # may take either sign
    active = np.ones(RULE_SIDE, dtype=bool)
    for _ in range(RULE_SIDE):
        params = _fit_noisy_or(rule_x[:, active], logit, y, weight / weight.sum(), l2)
        coefficients = np.zeros(RULE_SIDE)
        coefficients[active] = params[1 : 1 + int(active.sum())]
        negative = (coefficients < 0) & free & active
        if not negative.any():
            break
        active &= ~negative  # drop features that came out negative and refit without them
    return Calibrator(
        float(params[0]), tuple(float(c) for c in coefficients), float(params[-2]), float(params[-1])
    )


def _fit_noisy_or(rule_x: Floats, logit: Floats, y: Floats, weight: Floats, l2: float) -> Floats:
    n_rule = rule_x.shape[1]
    penalty = np.full(n_rule + 3, l2)
    penalty[[0, n_rule + 1]] = 0.0  # no penalty on the intercepts

    def objective(params: Floats) -> tuple[float, Floats]:
        u = _sigmoid(params[0] + rule_x @ params[1 : n_rule + 1])
        v = _sigmoid(params[n_rule + 1] + params[n_rule + 2] * logit)
        p = np.clip(1.0 - (1.0 - u) * (1.0 - v), 1e-12, 1.0 - 1e-12)
        loss = -float(np.sum(weight * (y * np.log(p) + (1.0 - y) * np.log(1.0 - p))))
        d_p = weight * (-(y / p) + (1.0 - y) / (1.0 - p))
        d_zr = d_p * (1.0 - v) * u * (1.0 - u)
        d_zc = d_p * (1.0 - u) * v * (1.0 - v)
        grad = np.concatenate([[d_zr.sum()], rule_x.T @ d_zr, [d_zc.sum(), d_zc @ logit]])
        return loss + 0.5 * float(np.sum(penalty * params**2)), grad + penalty * params

    start = np.zeros(n_rule + 3)
    start[0], start[n_rule + 1], start[n_rule + 2] = -4.0, 0.0, 1.0
    return _lbfgs(objective, start, max_iter=500)


def train_model(
    rows: Sequence[Row],
    rules: RuleSet,
    *,
    seed: int,
    spec: FeatureSpec | None = None,
    l2: float = L2_CLASSIFIER,
    meta: dict[str, object] | None = None,
) -> InjectionModel:
    spec = spec or FeatureSpec()
    featurizer = Featurizer(spec)
    size = 1 << spec.bits
    analyses = [analyze(rules, row.text) for row in rows]
    labels = [row.label for row in rows]
    taught = _without_benign_prefixes(featurizer, [a.classifier_text for a in analyses], labels)
    chunk_lists = [_chunk_rows(featurizer, text, label) for text, label in zip(taught, labels, strict=True)]
    matrix, owners = _matrix(featurizer, chunk_lists)
    owner = np.array(owners)
    counts = np.bincount(owner, minlength=len(rows))
    y = np.array(labels, dtype=np.float64)[owner]
    weight = np.array([row.weight for row in rows])[owner] / counts[owner]

    # Out-of-fold logits for the calibrator: each row scored by a classifier that never saw it.
    oof = np.zeros(len(rows))
    folds = np.array(group_folds(rows, INNER_FOLDS, seed))
    for fold in range(INNER_FOLDS):
        train_rows = folds[owner] != fold
        w, b = fit_logistic(_subset(matrix, train_rows), y[train_rows], weight[train_rows], size, l2)
        classifier = Classifier(featurizer, w.astype(np.float32), b)
        for index in np.flatnonzero(folds == fold):
            oof[index] = classifier.logit(analyses[index].classifier_text)
    w, b = fit_logistic(matrix, y, weight, size, l2)
    # The shipped weights are float16: fit the calibrator to what the gateway will compute.
    classifier = Classifier(featurizer, w.astype(np.float16).astype(np.float32), b)
    evidence = np.array([a.evidence(float(logit)).vector() for a, logit in zip(analyses, oof, strict=True)])
    sample_weight = np.array([row.weight for row in rows])
    calibrator = fit_calibrator(evidence, np.array(labels, dtype=np.float64), sample_weight)
    return InjectionModel(classifier, calibrator, dict(meta or {}))


def evidence_rows(analyses: Sequence[Analysis], logits: Sequence[float]) -> Floats:
    return np.array([a.evidence(logit).vector() for a, logit in zip(analyses, logits, strict=True)])


def _subset(matrix: _Matrix, keep_rows: npt.NDArray[np.bool_]) -> _Matrix:
    new_ids = np.cumsum(keep_rows) - 1
    mask = keep_rows[matrix.rows]
    return _Matrix(
        matrix.indices[mask], matrix.values[mask], new_ids[matrix.rows[mask]], int(keep_rows.sum())
    )


def _sigmoid(z: Floats) -> Floats:
    result: Floats = 0.5 * (1.0 + np.tanh(0.5 * z))
    return result


def _lbfgs(
    objective: Callable[[Floats], tuple[float, Floats]],
    x0: Floats,
    max_iter: int,
    memory: int = 10,
    tol: float = 1e-7,
) -> Floats:
    """Minimize with limited-memory BFGS and a backtracking (Armijo) line search."""
    x = x0.copy()
    value, grad = objective(x)
    s_hist: list[Floats] = []
    y_hist: list[Floats] = []
    for _ in range(max_iter):
        direction = -_two_loop(grad, s_hist, y_hist)
        slope = float(grad @ direction)
        if slope >= 0:
            direction, slope = -grad, -float(grad @ grad)
        step = 1.0
        while True:
            candidate = x + step * direction
            new_value, new_grad = objective(candidate)
            if new_value <= value + 1e-4 * step * slope or step < 1e-10:
                break
            step *= 0.5
        s, yk = candidate - x, new_grad - grad
        if float(s @ yk) > 1e-12:
            s_hist.append(s)
            y_hist.append(yk)
            if len(s_hist) > memory:
                s_hist.pop(0)
                y_hist.pop(0)
        improvement = value - new_value
        x, value, grad = candidate, new_value, new_grad
        if improvement < tol * max(1.0, abs(value)) and float(np.max(np.abs(grad))) < 1e-5:
            break
    return x


def _two_loop(grad: Floats, s_hist: list[Floats], y_hist: list[Floats]) -> Floats:
    q = grad.copy()
    alphas = []
    for s, yk in zip(reversed(s_hist), reversed(y_hist), strict=True):
        rho = 1.0 / float(yk @ s)
        alpha = rho * float(s @ q)
        q -= alpha * yk
        alphas.append((rho, alpha))
    if s_hist:
        q *= float(s_hist[-1] @ y_hist[-1]) / float(y_hist[-1] @ y_hist[-1])
    for (s, yk), (rho, alpha) in zip(zip(s_hist, y_hist, strict=True), reversed(alphas), strict=True):
        beta = rho * float(yk @ q)
        q += (alpha - beta) * s
    return q
