"""Training and forward tokens/s and peak RSS of SmolLM2-135M-Instruct LoRA on CPU: fp32 vs bf16, 1 vs 2 threads.

The trainer's CPU defaults (`dtype: auto`, `cpu_threads`) are chosen from these figures. Data: the
demo's sources (GSM8K, glaive tool calls, self-instruct, OASST) from sample_data/, rendered and
packed at `--seq-len` by `build_shards` with the packaged model's tokenizer. Each configuration runs
in its own child process (so peak RSS is its own), in the order given and then reversed, so drift in
the machine's load hits every configuration alike: `--steps` optimizer steps of `trainer.loop.train`
(LoRA r=16 on all linear layers; the first step is skipped as warm-up), then a no-grad forward over
`--eval-rows` packed rows as the evaluation and pool scoring do. Note the load average beside the
figures: the machine is shared.

    .venv/bin/python bench/cpu_defaults.py [--steps 6 --micro 2 4 --threads 1 2 --dtypes float32 bfloat16]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

SOURCES = [("gsm8k_train_400.jsonl", "math"), ("glaive_toolcall_100_sharegpt.json", "tool_use"),
           ("self_instruct_user_oriented_150.jsonl", "instructions"), ("oasst_en_60_trees.jsonl", "chat")]


def build_shards_for(model_dir: str, work: Path, seq_len: int) -> Path:
    """The demo's sources, packed with the model's tokenizer (no curation: throughput does not need it)."""
    import polars as pl

    from curator.config import CurateConfig, FormatConfig, SplitConfig
    from curator.format import build_shards
    from curator.ingest import read_input
    from curator.ingest.base import Quarantined, ReaderOptions
    from curator.record import to_table

    records = []
    for name, category in SOURCES:
        path = ROOT / "sample_data" / name
        for rec in read_input(path, name, None, ReaderOptions()):
            if not isinstance(rec, Quarantined):
                records.append({**rec, "category": category})
    frame = pl.from_arrow(to_table(records))
    cfg = CurateConfig(format=FormatConfig(tokenizer=model_dir, seq_len=seq_len), split=SplitConfig(eval_fraction=0.1))
    out = work / f"shards_{seq_len}"
    build_shards(frame, out, cfg, progress=False)
    return out


def worker(args: argparse.Namespace) -> None:
    """One configuration in this process: train, then a timed no-grad forward over eval rows; print JSON."""
    import resource

    import torch

    from trainer.config import TrainConfig
    from trainer.data import read_manifest, read_split
    from trainer.evaluate import evaluate_split
    from trainer.loop import train
    from trainer.losses import TokenLoss
    from trainer.model import load_base_model, resolve_runtime

    cfg = TrainConfig(model=args.model, shards=args.shards, output_dir=str(args.out), dtype=args.dtype,
                      cpu_threads=args.threads, micro_batch_size=args.micro, max_steps=args.steps, lr=1e-3,
                      warmup_steps=1, lora={"r": 16, "alpha": 32, "dropout": 0.0}, eval={"enabled": False},
                      checkpoint_every=0, device="cpu")
    train(cfg)
    metrics = [json.loads(x) for x in (Path(args.out) / "metrics.jsonl").read_text().splitlines() if x.strip()]
    steady = metrics[1:] or metrics
    runtime = resolve_runtime(cfg)
    model = load_base_model(cfg, runtime).eval()
    split = read_split(args.shards, read_manifest(args.shards), "eval")
    rows = min(args.eval_rows, split.rows)
    subset = type(split)(split.name, split.input_ids[:rows], split.loss_mask[:rows], split.position_ids[:rows],
                         split.seq_lens[:rows], split.sample_ids[:rows], split.categories[:rows])
    start = time.perf_counter()
    with torch.no_grad():
        evaluate_split(TokenLoss(model), subset, 8, 2048, runtime.device)
    forward_s = time.perf_counter() - start
    real = int(sum(sum(x) for x in subset.seq_lens))
    print(json.dumps({
        "dtype": args.dtype, "threads": args.threads, "micro": args.micro,
        "train_tokens_per_s": round(statistics.median(m["tokens_per_s"] for m in steady), 1),
        "step_s": round(statistics.median(m["step_time_s"] for m in steady), 2),
        "loss_first": metrics[0]["loss"], "loss_last": metrics[-1]["loss"],
        "forward_tokens_per_s": round(real / forward_s, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 0),
        "train_peak_rss_mb": metrics[-1]["peak_mem_mb"],
    }))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="model dir (default: the packaged SmolLM2, converted if needed)")
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--micro", type=int, nargs="+", default=[2, 4])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    parser.add_argument("--eval-rows", type=int, default=16)
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--shards", help=argparse.SUPPRESS)
    parser.add_argument("--dtype", help=argparse.SUPPRESS)
    args, _ = parser.parse_known_args()
    if args.worker:
        args.threads, args.micro = args.threads[0], args.micro[0]
        worker(args)
        return
    if args.model is None:
        from trainer.pretrained import packaged_model_dir

        args.model = str(packaged_model_dir())
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        shards = build_shards_for(args.model, Path(tmp), args.seq_len)
        configs = [(d, t, m) for m in args.micro for d in args.dtypes for t in args.threads]
        for i, (dtype, threads, micro) in enumerate(configs + configs[::-1]):
            load = os.getloadavg()[0]
            cmd = [sys.executable, __file__, "--worker", "--model", args.model, "--shards", str(shards),
                   "--dtype", dtype, "--threads", str(threads), "--micro", str(micro), "--steps", str(args.steps),
                   "--eval-rows", str(args.eval_rows), "--out", str(Path(tmp) / f"run{i}")]
            proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "TQDM_DISABLE": "1"},
                                  check=False)
            if proc.returncode:
                sys.stderr.write(proc.stderr[-3000:])
                raise SystemExit(f"worker {dtype}/{threads}/{micro} failed")
            row = {**json.loads(proc.stdout.strip().splitlines()[-1]), "load_before": round(load, 2)}
            results.append(row)
            print(json.dumps(row), flush=True)
    if args.out:
        args.out.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
