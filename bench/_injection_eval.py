"""Injection-detection evaluation for bench/guards_eval.py.

``evaluate_injection`` scores any JSONL file of ``text`` / ``label`` rows with a scanner;
``cross_validate`` retrains on k-1 folds of a file (plus the synthetic rows) and tests on the held-out
fold, k times; ``scan_latency_1kb`` times the scan of 1 KB prompts.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bench._common import percentile
from gateway.guards.injection import InjectionScanner, MessageText
from gateway.guards.rules import load_rules
from gateway.guards.settings import InjectionSettings
from scripts.injection_training import SEED, Row, read_jsonl, stratified_folds, synthetic_rows, train_model

TARGET_FPR = 0.03


def metrics(scores: Sequence[float], labels: Sequence[int], threshold: float) -> dict[str, Any]:
    """TPR, FPR, precision, F1 at ``threshold`` (score >= threshold flags), ROC AUC, and the lowest
    threshold whose FPR is at most 3% with the TPR it gives."""
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64)
    pos, neg = s[y == 1], s[y == 0]
    flagged = s >= threshold
    tp = int(np.sum(flagged & (y == 1)))
    fp = int(np.sum(flagged & (y == 0)))
    tpr = tp / len(pos) if len(pos) else 0.0
    fpr = fp / len(neg) if len(neg) else 0.0
    precision = tp / (tp + fp) if tp + fp else 0.0
    f1 = 2 * precision * tpr / (precision + tpr) if precision + tpr else 0.0
    at_target = _threshold_at_fpr(neg, TARGET_FPR)
    return {
        "n": len(s),
        "tpr": tpr,
        "fpr": fpr,
        "precision": precision,
        "f1": f1,
        "auc": roc_auc(pos, neg),
        "threshold": threshold,
        "threshold_at_fpr_3pct": at_target,
        "tpr_at_fpr_3pct": float(np.mean(pos >= at_target)) if len(pos) else 0.0,
    }


def roc_auc(pos: np.ndarray[Any, Any], neg: np.ndarray[Any, Any]) -> float:
    """Probability that a random positive outscores a random negative (ties count half)."""
    if not len(pos) or not len(neg):
        return float("nan")
    both = np.concatenate([pos, neg])
    order = np.argsort(both, kind="mergesort")
    ranks = np.empty(len(both))
    sorted_scores = both[order]
    i = 0
    while i < len(both):  # average ranks over ties
        j = i
        while j + 1 < len(both) and sorted_scores[j + 1] == sorted_scores[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    rank_sum = float(ranks[: len(pos)].sum())
    return (rank_sum - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg))


def _threshold_at_fpr(neg: np.ndarray[Any, Any], target: float) -> float:
    if not len(neg):
        return 0.0
    allowed = int(np.floor(target * len(neg)))  # negatives that may score at or above the threshold
    descending = np.sort(neg)[::-1]
    if allowed >= len(descending):
        return 0.0
    return float(np.nextafter(descending[allowed], np.inf))


def evaluate_injection(path: Path, scanner: InjectionScanner, threshold: float) -> dict[str, Any]:
    """Score every row of a JSONL file (``text``, ``label``: 1 = injection) as one user message."""
    rows = read_jsonl(path)
    scores = [scanner.score_text(row.text) for row in rows]
    return metrics(scores, [row.label for row in rows], threshold)


def cross_validate(
    path: Path,
    folds: int = 5,
    seed: int = SEED,
    *,
    threshold: float = 0.5,
    settings: InjectionSettings | None = None,
    synthetic: bool = True,
) -> dict[str, Any]:
    """Train on ``folds - 1`` folds of ``path`` (plus the synthetic rows), test on the remaining fold.

    Returns the pooled metrics over all held-out rows, and each fold's metrics under ``"folds"``.
    """
    settings = settings or InjectionSettings(cache_entries=0)
    rows = read_jsonl(path)
    assignment = stratified_folds([row.label for row in rows], folds, seed)
    extra = synthetic_rows(seed) if synthetic else []
    rules = load_rules(settings.rules_path)
    scores = [0.0] * len(rows)
    per_fold = []
    for fold in range(folds):
        train = [row for row, f in zip(rows, assignment, strict=True) if f != fold]
        model = train_model([*train, *extra], rules, seed=seed + fold)
        scanner = InjectionScanner(rules, model, settings)
        test = [i for i, f in enumerate(assignment) if f == fold]
        for i in test:
            scores[i] = scanner.score_text(rows[i].text)
        per_fold.append(metrics([scores[i] for i in test], [rows[i].label for i in test], threshold))
    pooled = metrics(scores, [row.label for row in rows], threshold)
    return {**pooled, "folds": per_fold}


def scan_latency_1kb(scanner: InjectionScanner | None = None, runs: int = 400) -> tuple[float, float]:
    """p50 and p99 milliseconds to scan one 1 KB prompt (distinct prompts, no result cache)."""
    if scanner is None:
        scanner = InjectionScanner.load(InjectionSettings(cache_entries=0))
    elif scanner.settings.cache_entries:
        scanner = InjectionScanner(scanner.rules, scanner.model, InjectionSettings(cache_entries=0))
    prompts = _prompts_1kb(runs)
    scanner.scan([MessageText(0, "user", prompts[0])])  # warm up
    timings = []
    for prompt in prompts:
        start = time.perf_counter()
        scanner.scan([MessageText(0, "user", prompt)])
        timings.append((time.perf_counter() - start) * 1000)
    return percentile(timings, 50), percentile(timings, 99)


def _prompts_1kb(count: int) -> list[str]:
    rng = np.random.default_rng(SEED)
    pool = [row.text for row in synthetic_rows(SEED)] + [row.text for row in _fallback()]
    prompts = []
    for i in range(count):
        text = ""
        while len(text) < 1024:
            text += pool[int(rng.integers(len(pool)))] + "\n"
        prompts.append(f"{i} {text}"[:1024])
    return prompts


def _fallback() -> list[Row]:
    return [Row("Please summarize the attached quarterly report and list three risks.", 0)]
