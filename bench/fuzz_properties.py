"""The property-based fuzz tests, with many times the examples CI runs: a longer search for crashes.

python -m bench.fuzz_properties [--quick] [--scale N] [--json PATH]

Runs the hypothesis properties of the JWT path, the policy loader, the SSE splitter
(tests/security/test_fuzz_properties.py) and the stream redactor (tests/gateway/test_stream_redactor.py)
with ``WARDEN_FUZZ_SCALE=N`` (default 20; ``--quick`` 3), each module in its own pytest process, and
prints one row per module: tests passed and failed, examples asked for, seconds. The exit status is
1 if any property failed.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from bench._common import format_table, pass_fail
from tests.support.fuzz_scale import SCALE_VARIABLE

REPO = Path(__file__).resolve().parents[1]
MODULES = {
    "jwt, policy loader, SSE splitter": ("tests/security/test_fuzz_properties.py", 300),
    "stream redactor": ("tests/gateway/test_stream_redactor.py", 100),
}
_SUMMARY = re.compile(r"(\d+) (passed|failed)")


def run_module(path: str, scale: int) -> tuple[int, int, float]:
    """(passed, failed, seconds) of one pytest run of ``path`` at ``scale``."""
    env = {**os.environ, SCALE_VARIABLE: str(scale)}
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", path],
        cwd=REPO, env=env, capture_output=True, text=True, check=False,
    )  # fmt: skip
    seconds = time.perf_counter() - started
    last_line = done.stdout.splitlines()[-1] if done.stdout else ""
    counts = {kind: int(number) for number, kind in _SUMMARY.findall(last_line)}
    if done.returncode not in (0, 1):  # 1 = some test failed; anything else = pytest could not run
        print(done.stdout[-2000:], done.stderr[-2000:], sep="\n")
        counts["failed"] = max(counts.get("failed", 0), 1)
    return counts.get("passed", 0), counts.get("failed", 0), seconds


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.fuzz_properties", description=__doc__)
    parser.add_argument("--scale", type=int, default=20, help="times the examples CI runs (default 20)")
    parser.add_argument("--quick", action="store_true", help="scale 3")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args()
    scale = 3 if args.quick else args.scale
    if scale < 1:
        parser.error("--scale must be at least 1")

    rows, results, failed_total = [], {}, 0
    for name, (path, per_property) in MODULES.items():
        passed, failed, seconds = run_module(path, scale)
        failed_total += failed
        asked = per_property * scale
        rows.append([name, str(passed), str(failed), f"{asked:,}", f"{seconds:.0f}"])
        results[name] = {"passed": passed, "failed": failed, "examples": asked, "seconds": seconds}
    print(f"Property fuzzing at {scale}x the CI examples")
    print(format_table(["properties", "tests passed", "failed", "examples/property", "s"], rows))
    print(f"{pass_fail(failed_total == 0)}: {failed_total} failed")
    if args.json:
        args.json.write_text(json.dumps({"scale": scale, "modules": results}, indent=2))
    return 0 if failed_total == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
