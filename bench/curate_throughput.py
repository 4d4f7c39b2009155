"""Ingest + normalize throughput of the local engine: records/s and peak RSS at 1x and 10x input size.

The foundation's target: at least 20k records/s on 2 cores for ingest + normalize (readers, Unicode
repair, quality signals, language), with memory flat as the input grows 10x. Inputs are the
benchmark mix of `ingest_throughput.py` (real sample_data records repeated with a perturbation).
Dedup and PII are off here: they have their own benchmarks. Each size runs in a fresh process; peak
RSS is the largest of the driver and its worker processes (ru_maxrss of self and children).

    .venv/bin/python bench/curate_throughput.py [--records 100000] [--scales 1 10] [--workers 2]
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from ingest_throughput import build_inputs  # noqa: E402


def measure(n: int, workers: int) -> dict[str, float]:
    """Run ingest + normalize + quality + language over the n-record input in this process."""
    from curator.config import InputSpec, load_config
    from curator.engines.local import LocalEngine

    paths = build_inputs(n)
    cfg = load_config(None, {"dedup": {"exact": {"enabled": False}, "minhash": {"enabled": False}},
                             "pii": {"enabled": False}})
    cfg.inputs = [InputSpec(path=str(p)) for p in paths]
    out = Path(tempfile.mkdtemp(prefix="curate-bench-"))
    try:
        start = time.perf_counter()
        run = LocalEngine(cfg, out, workers=workers).run()
        seconds = time.perf_counter() - start
    finally:
        shutil.rmtree(out, ignore_errors=True)
    usage = (resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN))
    rss = max(u.ru_maxrss for u in usage)
    acct = run.accounting
    return {"n": n, "read": acct.total_read, "kept": acct.kept, "seconds": seconds, "rss": rss * 1024,
            "bytes": sum(p.stat().st_size for p in paths)}


def main() -> None:
    """Run each size in a fresh process and print one table."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--records", type=int, default=100_000)
    ap.add_argument("--scales", type=int, nargs="+", default=[1, 10])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(measure(args.child, args.workers)))
        return
    console = Console(width=140)
    table = Table(title=f"ingest + normalize (local engine, {args.workers} workers)")
    for col in ("records", "input MB", "kept", "seconds", "records/s", "peak RSS MB"):
        table.add_column(col, justify="right")
    for scale in args.scales:
        n = args.records * scale
        build_inputs(n)
        with console.status(f"curating {n} records"):
            proc = subprocess.run([sys.executable, __file__, "--child", str(n), "--workers", str(args.workers)],
                                  capture_output=True, text=True, check=True)
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        table.add_row(f"{r['read']:,}", f"{r['bytes'] / 1e6:.0f}", f"{r['kept']:,}", f"{r['seconds']:.1f}",
                      f"{r['read'] / r['seconds']:,.0f}", f"{r['rss'] / 1e6:.0f}")
    console.print(table)


if __name__ == "__main__":
    main()
