"""Local vs Ray engine: records/s, peak memory and per-phase cost at several sizes, and a cluster estimate.

Inputs: `bench/ingest_throughput.py`'s `build_inputs(n)`: the real sample_data files repeated with a
perturbation, in the formats users bring. Config: the defaults (normalize, quality, language, exact +
MinHash dedup, cluster merge) with PII off (PII is a map phase whose cost per record is measured by
bench/pii_bench.py; it adds to the map share of the estimate below). Each (engine, size) runs in a
fresh process; peak memory is the largest sum of PSS over the run's processes (driver + pool or the
Ray workers, raylet and GCS), sampled every 0.2 s. PSS, not RSS: every Ray worker maps the shared
object store, and RSS would count those pages once per process.

    .venv/bin/python bench/engines_local_vs_ray.py [--sizes 10000 100000] [--cpus 2]

The estimate for 100M records in one hour takes the measured per-record CPU-seconds of each phase on
the Ray engine (map-type work scales with workers; the driver-side parts of the global phases do not)
and solves for the number of CPUs that fits the hour.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psutil
from rich.console import Console
from rich.table import Table

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))


class _Timer:
    """A progress sink that records when each labelled pass starts and ends (per-phase wall time)."""

    def __init__(self) -> None:
        self.marks: list[tuple[str, float]] = []

    def task(self, label: str, total: int | None) -> str:
        self.marks.append((label, time.perf_counter()))
        return label

    def advance(self, task: str, n: int) -> None:
        """Progress within a pass is not needed here."""

    def finish(self, task: str, total: int) -> None:
        """Ingest passes end when the next pass starts."""

    def phases(self, end: float) -> dict[str, float]:
        """Seconds per pass kind (all ingest passes summed), each ending where the next one starts."""
        out: dict[str, float] = {}
        for (label, t0), (_, t1) in zip(self.marks, [*self.marks[1:], ("end", end)], strict=True):
            key = "ingest+map" if label.startswith("ingest") else label
            out[key] = out.get(key, 0.0) + t1 - t0
        return out


def run_one(engine: str, n: int, cpus: int) -> dict[str, Any]:
    """One curation run of the n-record input in this process; returns timings and counts."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from ingest_throughput import build_inputs

    from curator.config import InputSpec, load_config

    cfg = load_config(None, {"pii": {"enabled": False}})
    cfg.inputs = [InputSpec(path=str(p)) for p in build_inputs(n)]
    out = Path(tempfile.mkdtemp(prefix=f"bench-{engine}-"))
    timer = _Timer()
    try:
        t_start = time.perf_counter()
        if engine == "ray":
            from curator.engines.ray import RayEngine, start_ray

            start_ray(num_cpus=cpus)
            t_up = time.perf_counter()
            run = RayEngine(cfg, out, num_cpus=cpus, progress=timer).run()
        else:
            from curator.engines.local import LocalEngine

            t_up = time.perf_counter()
            run = LocalEngine(cfg, out, workers=cpus, progress=timer).run()
        end = time.perf_counter()
    finally:
        shutil.rmtree(out, ignore_errors=True)
    return {
        "engine": engine, "n": run.accounting.total_read, "kept": run.accounting.kept,
        "startup": t_up - t_start, "seconds": end - t_up, "phases": timer.phases(end),
    }


def _tree_rss(root: psutil.Process) -> int:
    """PSS of the child, its children, and every Ray process on this machine (workers, raylet, GCS)."""
    procs = {root.pid: root}
    for p in root.children(recursive=True):
        procs[p.pid] = p
    for p in psutil.process_iter(["name", "cmdline"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if cmd.startswith("ray::") or "raylet" in cmd or "gcs_server" in cmd or "ray/_private" in cmd:
            procs[p.pid] = p
    total = 0
    for p in procs.values():
        try:
            # PSS: shared pages (the Ray object store is mapped by every worker) split among their users
            total += p.memory_full_info().pss
        except psutil.Error:
            continue
    return total


def measure(engine: str, n: int, cpus: int) -> dict[str, Any]:
    """Run one (engine, n) in a fresh process and sample its memory until it ends."""
    cmd = [sys.executable, __file__, "--one", engine, str(n), "--cpus", str(cpus)]
    child = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    proc = psutil.Process(child.pid)
    peak = 0
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not stop.is_set():
            with contextlib.suppress(psutil.Error):
                peak = max(peak, _tree_rss(proc))
            time.sleep(0.2)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    stdout, _ = child.communicate()
    stop.set()
    thread.join()
    if child.returncode != 0:
        raise RuntimeError(f"{engine} at {n} records failed (exit {child.returncode})")
    result = json.loads(stdout.strip().splitlines()[-1])
    result["peak_mb"] = peak / 2**20
    return result


# passes that run on the driver alone (the Ray engine labels them so): they do not shrink with workers
SERIAL_MARK = "(reduce, driver)"


def estimate(small: dict[str, Any], large: dict[str, Any], cpus: int, target: float = 100e6,
             hours: float = 1.0) -> dict[str, Any]:
    """CPUs needed for `target` records in `hours`, from the marginal per-record cost of each phase.

    The marginal cost (large - small) / (n_large - n_small) removes fixed start-up costs. Phases whose
    work is on the workers cost CPU-seconds = wall x `cpus`; the driver-only passes (`SERIAL_MARK`) add
    their wall time whatever the cluster size. Shuffles are counted as worker time (they are tasks).
    """
    dn = large["n"] - small["n"]
    marginal = {k: (large["phases"][k] - small["phases"].get(k, 0.0)) / dn for k in large["phases"]}
    cpu_per_record = sum(v for k, v in marginal.items() if SERIAL_MARK not in k) * cpus
    serial_per_record = sum(v for k, v in marginal.items() if SERIAL_MARK in k)
    budget = hours * 3600
    serial_total = serial_per_record * target
    need = cpu_per_record * target / (budget - serial_total) if serial_total < budget else float("inf")
    return {"marginal": marginal, "cpu_s_per_record": cpu_per_record, "serial_s_per_record": serial_per_record,
            "serial_hours_at_target": serial_total / 3600, "cpus_needed": need}


def spill_scan(files: int, rows_per_file: int = 8192, lookups: int = 10_000) -> dict[str, float]:
    """Seconds for one MinHash verification task to read `lookups` scattered rows' shingle sets from
    `files` spill files (what each task of the Ray engine's Jaccard pass does): the per-task cost that
    grows with the corpus, since the rows of a bucket are spread over every file."""
    import numpy as np
    import polars as pl
    import pyarrow as pa

    from curator.steps.dedup import MinHashDedup

    rng = np.random.default_rng(0)
    tmp = Path(tempfile.mkdtemp(prefix="spill-scan-"))
    try:
        paths = []
        for f in range(files):
            rows = np.arange(f * rows_per_file, (f + 1) * rows_per_file, dtype=np.int64)
            lens = rng.integers(50, 250, rows_per_file)
            offsets = np.concatenate([[0], np.cumsum(lens)]).astype(np.int32)
            values = pa.array(rng.integers(0, 2**32, int(offsets[-1]), dtype=np.uint32))
            path = tmp / f"part-{rows[0]:020d}.parquet"
            lists = pl.from_arrow(pa.ListArray.from_arrays(offsets, values))
            pl.DataFrame({"row": rows, "h": lists}).write_parquet(path)
            paths.append(str(path))
        wanted = np.unique(rng.integers(0, files * rows_per_file, lookups))
        t0 = time.perf_counter()
        sets = MinHashDedup._load_sets(paths, wanted)
        seconds = time.perf_counter() - t0
        assert len(sets) == len(wanted)
        return {"files": files, "rows": files * rows_per_file, "lookups": len(wanted), "seconds": seconds}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--cpus", type=int, default=2)
    parser.add_argument("--engines", nargs="+", default=["local", "ray"])
    parser.add_argument("--one", nargs=2, metavar=("ENGINE", "N"), help=argparse.SUPPRESS)
    parser.add_argument("--spill-scan", type=int, nargs="+", metavar="FILES",
                        help="only time one verification task's spill read over this many spill files")
    args = parser.parse_args()
    if args.spill_scan:
        for files in args.spill_scan:
            print(json.dumps(spill_scan(files)))
        return
    if args.one:
        print(json.dumps(run_one(args.one[0], int(args.one[1]), args.cpus)))
        return
    console = Console(width=200)
    results = []
    with console.status("running") as status:
        for n in args.sizes:
            for engine in args.engines:
                status.update(f"{engine} at {n} records")
                results.append(measure(engine, n, args.cpus))
    table = Table(title=f"local vs Ray engine, {args.cpus} CPUs (PII off)")
    for col in ("engine", "records", "start-up s", "run s", "records/s", "peak MB", "phases (s)"):
        table.add_column(col, justify="left" if col in ("engine", "phases (s)") else "right")
    for r in results:
        phases = ", ".join(f"{k} {v:.1f}" for k, v in r["phases"].items())
        table.add_row(r["engine"], str(r["n"]), f"{r['startup']:.1f}", f"{r['seconds']:.1f}",
                      f"{r['n'] / r['seconds']:.0f}", f"{r['peak_mb']:.0f}", phases)
    console.print(table)
    ray_runs = sorted((r for r in results if r["engine"] == "ray"), key=lambda r: r["n"])
    if len(ray_runs) >= 2:
        est = estimate(ray_runs[0], ray_runs[-1], args.cpus)
        per_phase = {k: round(v * 1e6, 1) for k, v in est["marginal"].items()}
        console.print(f"marginal wall µs/record by phase (Ray): {json.dumps(per_phase)}")
        console.print(f"100M records in 1 h: {est['cpu_s_per_record'] * 1e3:.3f} ms CPU/record on workers, "
                      f"{est['serial_s_per_record'] * 1e6:.1f} µs/record on the driver "
                      f"({est['serial_hours_at_target']:.2f} h at 100M) -> {est['cpus_needed']:.0f} worker CPUs")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
