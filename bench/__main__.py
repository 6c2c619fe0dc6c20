"""`make bench`: run every benchmark, each printing a short side-by-side table.

python -m bench [--quick] [--json DIR] [NAME ...]
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

# Each module exposes main(argv) -> int and accepts --quick and --json PATH.
BENCHMARKS = {
    "tls_link": "bench.tls_link",
    "engine_throughput": "bench.engine_throughput",
    "worker_serving": "bench.worker_serving",
    "gateway_overhead": "bench.gateway_overhead",
    "telemetry_cost": "bench.telemetry_cost",
    "audit_throughput": "bench.audit_throughput",
    "guards_eval": "bench.guards_eval",
    "soak": "bench.soak",
    "fuzz_api": "bench.fuzz_api",
    "fuzz_properties": "bench.fuzz_properties",
}


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument(
        "names", nargs="*", help=f"benchmarks to run (default: all of {', '.join(BENCHMARKS)})"
    )
    parser.add_argument("--quick", action="store_true", help="short runs")
    parser.add_argument("--json", type=Path, help="directory for one JSON result file per benchmark")
    args = parser.parse_args()
    unknown = sorted(set(args.names) - set(BENCHMARKS))
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(unknown)}")
    status = 0
    for name in args.names or list(BENCHMARKS):
        module = importlib.import_module(BENCHMARKS[name])
        argv = ["--quick"] if args.quick else []
        if args.json:
            args.json.mkdir(parents=True, exist_ok=True)
            argv += ["--json", str(args.json / f"{name}.json")]
        print(f"\n### {name}")
        status |= module.main(argv)
    return status


if __name__ == "__main__":
    sys.exit(main())
