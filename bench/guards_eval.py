"""How well the guards work, and what they cost: injection detection and PII redaction.

python -m bench.guards_eval [--injection FILE] [--cross-validate] [--pii FILE] [--json PATH] [--quick]

--injection FILE   JSONL rows {"text", "label"} (1 = injection or jailbreak), scored by the shipped
                   scanner: TPR, FPR, precision, F1 at the threshold, ROC AUC, and the threshold that
                   keeps FPR <= 3% with the TPR it gives.
--cross-validate   instead, 5-fold cross-validation on that file: train on four folds (plus the
                   synthetic rows of scripts/train_injection_classifier.py), test on the fifth.
--pii FILE         JSONL rows {"text", "spans": [[start, end, ENTITY_TYPE], ...]}: recall and precision
                   per entity type (a span is found when the redaction covers it) and the rows with no
                   labelled span where anything was redacted.
Any files in these formats work. Without options it evaluates the development sets in shared/data
(injection with cross-validation). Latency: p50/p99 of scanning a 1 KB prompt and of redacting a
1 KB answer.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

os.environ.setdefault("TLDEXTRACT_PUBLIC_SUFFIX_LIST_URLS", "")

from bench._common import format_table, pass_fail
from bench._injection_eval import cross_validate, evaluate_injection, scan_latency_1kb
from bench._pii_eval import evaluate_pii, redact_latency_1kb
from gateway.guards.injection import InjectionScanner
from gateway.guards.pii import PiiAnalyzer
from gateway.guards.settings import InjectionSettings, PiiSettings
from gateway.policy.schema import PiiGuard

DEV_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
CLAIMED = ("EMAIL_ADDRESS", "CREDIT_CARD", "US_SSN", "IBAN_CODE", "IP_ADDRESS", "PHONE_NUMBER")
TARGETS = {"tpr_at_fpr_3pct": 0.95, "recall": 0.99, "precision": 0.95, "scan_ms": 2.0, "redact_ms": 5.0}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.guards_eval",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--injection", type=Path, help="JSONL with text and label")
    parser.add_argument("--cross-validate", action="store_true", help="5-fold CV on --injection")
    parser.add_argument("--pii", type=Path, help="JSONL with text and spans")
    parser.add_argument(
        "--threshold", type=float, default=0.5, help="injection threshold (policy default 0.5)"
    )
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--quick", action="store_true", help="fewer latency samples")
    args = parser.parse_args(argv)
    if args.injection is None and args.pii is None:
        args.injection, args.pii = DEV_DATA / "injection-dev.jsonl", DEV_DATA / "pii-dev.jsonl"
        args.cross_validate = True
    for path in (args.injection, args.pii):
        if path is not None and not path.is_file():
            parser.error(f"{path}: no such file")

    results: dict[str, Any] = {}
    checks: list[tuple[str, bool]] = []
    scanner = InjectionScanner.load(InjectionSettings(cache_entries=0))
    if args.injection is not None:
        if args.cross_validate:
            injection = cross_validate(args.injection, threshold=args.threshold)
            injection.pop("folds", None)
        else:
            injection = evaluate_injection(args.injection, scanner, args.threshold)
        results["injection"] = injection
        print_injection(injection, args.injection, args.cross_validate)
        ok = injection["tpr_at_fpr_3pct"] >= TARGETS["tpr_at_fpr_3pct"]
        checks.append((f"injection TPR at FPR <= 3%: {injection['tpr_at_fpr_3pct']:.3f} (>= 0.95)", ok))

    analyzer = PiiAnalyzer(PiiSettings())
    policy = PiiGuard()
    if args.pii is not None:
        pii = evaluate_pii(args.pii, analyzer, policy)
        results["pii"] = pii
        print_pii(pii, args.pii)
        for kind in CLAIMED:
            if kind in pii:
                ok = (
                    pii[kind]["recall"] >= TARGETS["recall"]
                    and pii[kind]["precision"] >= TARGETS["precision"]
                )
                checks.append(
                    (f"{kind} recall {pii[kind]['recall']:.3f}, precision {pii[kind]['precision']:.3f}", ok)
                )

    runs = 100 if args.quick else 400
    scan_p50, scan_p99 = scan_latency_1kb(scanner, runs=runs)
    redact_p50, redact_p99 = redact_latency_1kb(analyzer, policy, rounds=runs)
    analyzer.close()
    results["latency_ms"] = {
        "scan_1kb_p50": scan_p50,
        "scan_1kb_p99": scan_p99,
        "redact_1kb_p50": redact_p50,
        "redact_1kb_p99": redact_p99,
    }
    print("\nlatency per 1 KB (ms)")
    print(format_table(["step", "p50", "p99"], [
        ["injection scan of a prompt", f"{scan_p50:.2f}", f"{scan_p99:.2f}"],
        ["PII redaction of an answer", f"{redact_p50:.2f}", f"{redact_p99:.2f}"],
    ]))  # fmt: skip
    checks.append((f"scan 1 KB p50 {scan_p50:.2f} ms (<= 2)", scan_p50 <= TARGETS["scan_ms"]))
    checks.append((f"redact 1 KB p50 {redact_p50:.2f} ms (<= 5)", redact_p50 <= TARGETS["redact_ms"]))
    print()
    for line, ok in checks:
        print(f"{line}: {pass_fail(ok)}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0 if all(ok for _, ok in checks) else 1


def print_injection(result: dict[str, Any], path: Path, cross_validated: bool) -> None:
    how = "5-fold cross-validation" if cross_validated else "shipped scanner"
    print(f"injection detection on {path.name} ({result['n']} rows, {how})")
    keys = ("tpr", "fpr", "precision", "f1", "auc", "threshold", "threshold_at_fpr_3pct", "tpr_at_fpr_3pct")
    print(format_table(["metric", "value"], [[key, f"{result[key]:.3f}"] for key in keys]))


def print_pii(result: dict[str, Any], path: Path) -> None:
    print(f"\nPII redaction on {path.name}")
    rows = [
        [kind, str(value["support"]), f"{value['recall']:.3f}", f"{value['precision']:.3f}"]
        for kind, value in result.items()
        if isinstance(value, dict)
    ]
    print(format_table(["entity", "support", "recall", "precision"], rows))
    print(f"rows without labelled PII where something was redacted: {result['false_positive_rows']}")


if __name__ == "__main__":
    sys.exit(main())
