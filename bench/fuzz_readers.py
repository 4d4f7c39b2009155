"""The reader fuzz suite (`tests/test_fuzz_readers.py`) run long and random, with its figures.

`make test` runs each property on 25 derandomized examples; this runs them on `--examples` fresh
random ones (the full-run property on a sixth of that), times each property, and lists failures
with hypothesis' minimal example. Every failure it finds is a bug: fix it, and add the example as
a regression test. Figures go in BENCHMARKS.md ("Reader fuzzing").

    python bench/fuzz_readers.py --examples 1000 [--json out.json]
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

ROOT = Path(__file__).resolve().parent.parent
SUITE = ROOT / "tests" / "test_fuzz_readers.py"


def properties() -> list[str]:
    """The property test names of the suite, in file order."""
    return re.findall(r"^def (test_\w+)\(", SUITE.read_text(encoding="utf-8"), flags=re.M)


def run_property(name: str, examples: int, time_limit: float) -> dict[str, object]:
    """Run one property in its own pytest process; its time, outcome and the failing example if any."""
    env = {**os.environ, "CURATOR_FUZZ_EXAMPLES": str(examples), "CURATOR_FUZZ_RANDOM": "1",
           "CURATOR_FUZZ_TIME_LIMIT": str(time_limit), "PYTHONPATH": str(ROOT)}
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "pytest", f"{SUITE}::{name}", "-q", "-x", "-p", "no:cacheprovider",
                           "--hypothesis-show-statistics"], cwd=ROOT, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    out = done.stdout + done.stderr
    passing = re.search(r"(\d+) passing(?: examples)?,", out)
    falsifying = re.search(r"Falsifying example:.*?(?=\n\n|\Z)", out, flags=re.S)
    return {
        "property": name,
        "ok": done.returncode == 0,
        "seconds": round(seconds, 1),
        "passing_examples": int(passing.group(1)) if passing else None,
        "failure": falsifying.group(0)[:2000] if falsifying else (None if done.returncode == 0 else out[-2000:]),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--examples", type=int, default=1000, help="examples per property (full runs: a sixth)")
    parser.add_argument("--time-limit", type=float, default=20.0, help="seconds one example may take")
    parser.add_argument("--only", help="run only the properties whose name contains this")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    load = os.getloadavg()
    results = []
    for name in properties():
        if args.only and args.only not in name:
            continue
        result = run_property(name, args.examples, args.time_limit)
        results.append(result)
        mark = "ok  " if result["ok"] else "FAIL"
        print(f"{mark} {name:45s} {result['passing_examples']!s:>6} examples  {result['seconds']:7.1f} s", flush=True)
        if result["failure"]:
            print(result["failure"])
    total = sum(float(r["seconds"]) for r in results)  # type: ignore[arg-type]
    print(f"total {total:.0f} s; load average before {load[0]:.2f}, after {os.getloadavg()[0]:.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"examples": args.examples, "load_before": load,
                                               "results": results}, indent=2) + "\n")
    return 0 if all(r["ok"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
