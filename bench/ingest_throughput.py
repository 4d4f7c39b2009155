"""Ingest throughput and memory: records/s and peak RSS of the readers at 1x and 10x input size.

Inputs are the real sample_data files repeated with a perturbation (a suffix on the first prompt of
each copy, so no two records are identical), written once per size under bench/results/ingest/ as
the formats users bring: OpenAI JSONL, ShareGPT JSON arrays, Alpaca/GSM8K JSONL, OpenAssistant trees.
Each size runs in a fresh process so its peak RSS is its own: flat RSS from 1x to 10x shows streaming.

    .venv/bin/python bench/ingest_throughput.py [--records 100000] [--scales 1 10]

`iter_bench_records(n)` yields the canonical records of an n-record input, for benchmarks that add
steps after ingest (normalize, quality).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import Progress
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from curator.ingest import Note, Quarantined, ReaderOptions, read_input  # noqa: E402
from curator.record import Record  # noqa: E402

SAMPLE = ROOT / "sample_data"
OUT = ROOT / "bench" / "results" / "ingest"
# (sample file, output kind, share of records): the mix a user with exports and pair sets might bring.
MIX = (
    ("pirate_training_set.jsonl", "jsonl", 0.10),
    ("llamafactory_v1_sft_messages_200.jsonl", "jsonl", 0.15),
    ("fastchat_dummy_conversation_sharegpt.json", "json", 0.20),
    ("glaive_toolcall_100_sharegpt.json", "json", 0.10),
    ("gsm8k_train_400.jsonl", "jsonl", 0.20),
    ("self_instruct_user_oriented_150.jsonl", "jsonl", 0.20),
    ("oasst_en_60_trees.jsonl", "jsonl", 0.05),
)
PROMPT_KEYS = ("value", "content", "text", "instruction", "question")


def _load(path: Path) -> list[Any]:
    raw = path.read_text(encoding="utf-8")
    return json.loads(raw) if path.suffix == ".json" else [json.loads(x) for x in raw.split("\n") if x.strip()]


def perturb(obj: Any, k: int) -> Any:
    """A copy of `obj` whose first prompt-like string gets a ' [k]' suffix."""
    done = False

    def walk(x: Any) -> Any:
        nonlocal done
        if isinstance(x, dict):
            out = {}
            for key, val in x.items():
                if not done and key in PROMPT_KEYS and isinstance(val, str):
                    out[key], done = f"{val} [{k}]", True
                else:
                    out[key] = walk(val)
            return out
        if isinstance(x, list):
            return [walk(v) for v in x]
        return x

    return walk(obj)


def build_inputs(n: int, out: Path = OUT) -> list[Path]:
    """Write (once) the input files of an n-record benchmark and return their paths."""
    target = out / f"n{n}"
    done = target / "done.json"
    if done.exists():
        return [target / p for p in json.loads(done.read_text())]
    target.mkdir(parents=True, exist_ok=True)
    paths = []
    with Progress(transient=True) as bar:
        task = bar.add_task(f"building {n} records", total=n)
        for name, kind, share in MIX:
            rows = _load(SAMPLE / name)
            count = int(n * share)
            path = target / f"{Path(name).stem}.{kind}"
            with path.open("w", encoding="utf-8") as fh:
                if kind == "json":
                    fh.write("[\n")
                for i in range(count):
                    obj = perturb(rows[i % len(rows)], i // len(rows))
                    text = json.dumps(obj, ensure_ascii=False)
                    fh.write(text + ("\n" if kind == "jsonl" else (",\n" if i < count - 1 else "\n")))
                    if i % 5000 == 0:
                        bar.advance(task, min(5000, count - i))
                if kind == "json":
                    fh.write("]\n")
            paths.append(path)
    done.write_text(json.dumps([p.name for p in paths]))
    return paths


def iter_bench_records(n: int, opts: ReaderOptions | None = None) -> Iterator[Record]:
    """The canonical records of the n-record benchmark input (quarantine rows are skipped)."""
    opts = opts or ReaderOptions()
    for path in build_inputs(n):
        for item in read_input(path, path.name, None, opts):
            if not isinstance(item, Quarantined | Note):
                yield item


def measure(n: int) -> dict[str, float]:
    """Ingest the n-record input in this process: records, quarantined, seconds, peak RSS."""
    paths = build_inputs(n)
    size = sum(p.stat().st_size for p in paths)
    records = quarantined = 0
    cpu0 = time.process_time()
    start = time.perf_counter()
    for path in paths:
        for item in read_input(path, path.name, None, ReaderOptions()):
            if isinstance(item, Quarantined):
                quarantined += 1
            else:
                records += 1
    seconds = time.perf_counter() - start
    cpu = time.process_time() - cpu0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {
        "n": n,
        "records": records,
        "quarantined": quarantined,
        "seconds": seconds,
        "cpu": cpu,
        "bytes": size,
        "rss": rss,
    }


def main() -> None:
    """Run each size in a fresh process and print one table."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--records", type=int, default=100_000)
    ap.add_argument("--scales", type=int, nargs="+", default=[1, 10])
    ap.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(measure(args.child)))
        return
    console = Console(width=160)
    table = Table(title="ingest throughput (readers only, one process, CPU)")
    # On a shared machine wall time includes waiting for a core; CPU time is what the readers cost.
    for col in (
        "records",
        "input MB",
        "quarantined",
        "wall s",
        "records/s",
        "CPU s",
        "records/CPU-s",
        "MB/CPU-s",
        "peak RSS MB",
    ):
        table.add_column(col, justify="right")
    for scale in args.scales:
        n = args.records * scale
        build_inputs(n)
        with console.status(f"ingesting {n} records"):
            proc = subprocess.run(
                [sys.executable, __file__, "--child", str(n)], capture_output=True, text=True, check=True
            )
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        table.add_row(
            f"{r['records']:,}",
            f"{r['bytes'] / 1e6:.0f}",
            str(r["quarantined"]),
            f"{r['seconds']:.1f}",
            f"{r['records'] / r['seconds']:,.0f}",
            f"{r['cpu']:.1f}",
            f"{r['records'] / r['cpu']:,.0f}",
            f"{r['bytes'] / 1e6 / r['cpu']:.1f}",
            f"{r['rss'] / 1e6:.0f}",
        )
    console.print(table)


if __name__ == "__main__":
    main()
