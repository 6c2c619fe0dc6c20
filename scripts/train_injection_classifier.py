"""Train the prompt-injection classifier and calibration shipped in gateway/guards/data/.

python -m scripts.train_injection_classifier [--data FILE] [--out FILE] [--folds 5] [--no-cv] [--heldout]

Reproducible: a fixed seed for folds, synthetic rows and nothing else random; no network. Trains on
the development set (JSONL ``text``/``label``) plus the template-generated rows of
scripts/injection_synth.py, prints k-fold cross-validation of the whole scanner (rules, classifier,
calibration; each fold retrained without its rows) and, with ``--heldout``, a check on synthetic
rows whose phrasings and containers the model never saw.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench._common import format_table
from bench._injection_eval import cross_validate, metrics
from gateway.guards.classifier import save_model
from gateway.guards.injection import InjectionScanner
from gateway.guards.rules import load_rules
from gateway.guards.settings import InjectionSettings
from scripts.injection_synth import generate
from scripts.injection_training import (
    SEED,
    SYNTHETIC_WEIGHT,
    Row,
    read_jsonl,
    synthetic_rows,
    train_model,
)

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "injection-dev.jsonl"
DEFAULT_OUT = REPO / "gateway" / "guards" / "data" / "injection_model.npz"
DEFAULT_RULES = REPO / "policies" / "rules" / "injection.yaml"
HELDOUT_ROWS = 1200


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scripts.train_injection_classifier", description=__doc__)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="JSONL rows with text and label")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where to write the model (.npz)")
    parser.add_argument("--rules", type=Path, default=DEFAULT_RULES, help="signature rules (YAML)")
    parser.add_argument("--folds", type=int, default=5, help="cross-validation folds")
    parser.add_argument("--no-cv", action="store_true", help="skip cross-validation")
    parser.add_argument("--heldout", action="store_true", help="also check on held-out synthetic rows")
    args = parser.parse_args(argv)

    rows = read_jsonl(args.data)
    rules = load_rules(args.rules)
    settings = InjectionSettings(rules_path=args.rules, cache_entries=0)
    if not args.no_cv:
        result = cross_validate(args.data, args.folds, SEED, settings=settings)
        print(f"{args.folds}-fold cross-validation on {args.data.name} (whole scanner, retrained per fold):")
        print(
            _table([*(("fold " + str(i + 1), m) for i, m in enumerate(result["folds"])), ("pooled", result)])
        )
    if args.heldout:
        _heldout_check(rows, rules, settings)

    meta = {
        "seed": SEED,
        "data": args.data.name,
        "data_sha256": hashlib.sha256(args.data.read_bytes()).hexdigest(),
        "rows": len(rows),
        "synthetic_weight": SYNTHETIC_WEIGHT,
    }
    model = train_model([*rows, *synthetic_rows(SEED)], rules, seed=SEED, meta=meta)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_model(args.out, model)
    size_kb = args.out.stat().st_size / 1024
    print(f"wrote {args.out} ({size_kb:.0f} KiB)")
    return 0


def _heldout_check(rows: list[Row], rules: Any, settings: InjectionSettings) -> None:
    """Train with one half of the synthetic templates, test on rows built from the other half."""
    train_synthetic = [
        Row(r.text, r.label, SYNTHETIC_WEIGHT, r.group) for r in generate(SEED, 2400, 2400, split="train")
    ]
    model = train_model([*rows, *train_synthetic], rules, seed=SEED)
    scanner = InjectionScanner(rules, model, settings)
    test = generate(SEED + 1, HELDOUT_ROWS // 2, HELDOUT_ROWS // 2, split="heldout")
    groups: dict[str, tuple[list[float], list[int]]] = defaultdict(lambda: ([], []))
    for row in test:
        score = scanner.score_text(row.text)
        for group in _groups(row.kind, row.lang, row.label):
            groups[group][0].append(score)
            groups[group][1].append(row.label)
    print(f"held-out synthetic check ({len(test)} rows; phrasings and containers unseen in training):")
    table = [(name, metrics(scores, labels, 0.5)) for name, (scores, labels) in sorted(groups.items())]
    print(_table(table))


def _groups(kind: str, lang: str, label: int) -> list[str]:
    """Subsets reported by the held-out check; each holds attacks and the benign rows like them."""
    groups = ["all", "english" if lang == "en" else "other languages"]
    parts = kind.split("/")
    container = parts[2] if label == 1 else (parts[2] if parts[1] == "container" else "plain")
    if container not in ("plain", "plain2"):
        groups.append("inside documents, emails, code, tool output")
    if (label == 1 and parts[1] != "none") or (label == 0 and parts[1] in ("noise", "markup")):
        groups.append("obfuscated (attacks) / invisible chars, encodings (benign)")
    return groups


def _table(rows: Sequence[tuple[str, dict[str, Any]]]) -> str:
    headers = ["set", "n", "TPR@0.5", "FPR@0.5", "AUC", "thr@FPR3%", "TPR@FPR3%"]
    body = [
        [
            name,
            str(m["n"]),
            f"{m['tpr']:.3f}",
            f"{m['fpr']:.3f}",
            f"{m['auc']:.3f}",
            f"{m['threshold_at_fpr_3pct']:.3f}",
            f"{m['tpr_at_fpr_3pct']:.3f}",
        ]
        for name, m in rows
    ]
    return format_table(headers, body)


if __name__ == "__main__":
    sys.exit(main())
