"""Schemathesis against the gateway's OpenAPI document, longer than CI runs it: cases and statuses.

python -m bench.fuzz_api [--quick] [--examples N | --minutes M] [--seed S] [--json PATH]

The same run as tests/security/test_openapi_fuzz.py (tests/support/api_fuzz.py): the real gateway
app in front of a fake worker, every operation fuzzed without credentials and with a member's
token, with valid and invalid data; each response checked for 5xx, conformance to the document
and the OpenAI error envelope. ``--examples`` bounds the cases per operation, caller and mode;
``--minutes`` repeats rounds of ``--examples`` with the next seed until the time is up. The exit
status is 1 if any check failed.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from bench._common import format_table, pass_fail
from gateway.pki import init_pki
from tests.support.api_fuzz import CALLERS, MODES, FuzzedGateway, Report

ROUND_EXAMPLES = 200  # per round when --minutes sets the length


Reports = dict[tuple[str, str, str], Report]


def fuzz(gateway: FuzzedGateway, examples: int, seed: int, reports: Reports) -> None:
    """One round over every operation, caller and mode, merged into ``reports``."""
    for operation in gateway.operations():
        for caller in CALLERS:
            for mode in MODES:
                report = gateway.fuzz(operation, caller, mode, examples=examples, seed=seed)
                if report.cases:
                    key = (report.operation, caller, mode.value)
                    reports.setdefault(key, Report(report.operation, caller, mode.value)).merge(report)


def table(reports: list[Report]) -> str:
    rows = [
        [
            r.operation, r.caller, r.mode, str(r.cases), f"{r.seconds:.1f}",
            " ".join(f"{status}:{n}" for status, n in sorted(r.statuses.items())),
            str(sum(r.failures.values())),
        ]
        for r in reports
    ]  # fmt: skip
    return format_table(["operation", "caller", "data", "cases", "s", "statuses", "failures"], rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.fuzz_api", description=__doc__)
    parser.add_argument("--examples", type=int, help="cases per operation, caller and mode (default 2000)")
    parser.add_argument("--minutes", type=float, help="repeat rounds until this much time has passed")
    parser.add_argument("--seed", type=int, default=0, help="seed of the first round (each round adds one)")
    parser.add_argument("--quick", action="store_true", help="100 cases per operation, caller and mode")
    parser.add_argument("--json", type=Path, help="write every report (statuses, failures, examples) here")
    args = parser.parse_args(argv)
    if args.examples is not None and args.examples < 1:
        parser.error("--examples must be at least 1")
    if args.minutes is not None and args.minutes <= 0:
        parser.error("--minutes must be positive")
    examples = args.examples or (100 if args.quick else ROUND_EXAMPLES if args.minutes else 2000)
    reports: Reports = {}
    started = time.monotonic()
    rounds = 0
    with tempfile.TemporaryDirectory() as tmp:
        pki, _ = init_pki(Path(tmp) / "pki")
        with FuzzedGateway(Path(tmp) / "run", pki) as gateway:
            while True:
                fuzz(gateway, examples, args.seed + rounds, reports)
                rounds += 1
                if args.minutes is None or time.monotonic() - started >= args.minutes * 60:
                    break
    ordered = list(reports.values())
    failed = [r for r in ordered if r.failures]
    elapsed = time.monotonic() - started
    seeds = f"{args.seed}..{args.seed + rounds - 1}"
    print(f"schemathesis on the gateway's OpenAPI document: {rounds} round(s) of up to {examples} cases")
    print(f"per operation, caller and data mode, seeds {seeds}, {elapsed:.0f} s\n")
    print(table(ordered))
    for report in failed:
        print(f"\n{report.summary()}")
    cases = sum(r.cases for r in ordered)
    failures = sum(sum(r.failures.values()) for r in ordered)
    print(f"\n{cases} cases, {failures} failures: {pass_fail(not failed)}")
    if args.json:
        reports_json = [r.as_dict() for r in ordered]
        document = {"rounds": rounds, "examples": examples, "seed": args.seed, "reports": reports_json}
        args.json.write_text(json.dumps(document, indent=2) + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
