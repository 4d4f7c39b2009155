"""Tokens/s and peak RSS of `trainer.loop.train` vs TRL `SFTTrainer` on the same model, data and steps.

Data: GSM8K (400) + self-instruct (150) records from sample_data/, rendered and BFD-packed by
`curator.format.shards.build_shards` with a tokenizer trained here; TRL gets the same documents
(input_ids + assistant_masks) and packs them itself (packing=True, packing_strategy="bfd",
padding-free, gradient checkpointing off). Model: a randomly initialised Llama-style model from
`trainer.tiny`. Both run LoRA (same r/alpha/dropout/targets), fp32 on CPU, with the same threads,
micro batch, lr schedule and number of steps, each in its own child process so the peak RSS of
one cannot hide in the other. Steady-state tokens/s skips the first `--skip` steps.

MFU-style figures: FLOPs/token = 6N + 12·L·H·T (PaLM appendix B; N = non-embedding parameters plus
the LM head matmul, T = seq_len); the "peak" is a measured fp32 matmul on the same threads, so a GPU
run can later be compared against its datasheet peak the same way.

    .venv/bin/python bench/train_vs_trl.py [--steps 30 --micro 4 --seq-len 1024 --threads 1]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def _records() -> list[dict]:
    from curator.record import make_record

    out = []
    for i, line in enumerate((ROOT / "sample_data" / "gsm8k_train_400.jsonl").read_text().split("\n")):
        if line.strip():
            row = json.loads(line)
            msgs = [{"role": "user", "content": row["question"]}, {"role": "assistant", "content": row["answer"]}]
            out.append(make_record(msgs, source={"file": "gsm8k", "index": i, "format": "gsm8k"}, category="math"))
    for i, line in enumerate((ROOT / "sample_data" / "self_instruct_user_oriented_150.jsonl").read_text().split("\n")):
        if line.strip():
            row = json.loads(line)
            inst = row["instances"][0]
            prompt = row["instruction"] + ("\n\n" + inst["input"] if inst["input"] else "")
            msgs = [{"role": "user", "content": prompt}, {"role": "assistant", "content": inst["output"]}]
            out.append(
                make_record(msgs, source={"file": "self_instruct", "index": i, "format": "si"}, category="general")
            )
    return out


def build_data(work: Path, seq_len: int, hidden: int, layers: int) -> tuple[Path, Path, dict]:
    """Tokenizer (vocab 4096) + tiny model + packed shards (no eval split) under `work`."""
    import polars as pl
    import pyarrow as pa

    from curator.config import load_config
    from curator.format.shards import build_shards
    from curator.record import RECORD_SCHEMA
    from trainer.tiny import build_tiny_model, train_tokenizer

    texts = [p.read_text(errors="replace")[:200_000] for p in sorted((ROOT / "sample_data").rglob("*.json*"))]
    tok = train_tokenizer(texts, work / "tok", vocab_size=4096)
    model = build_tiny_model(tok, work / "model", hidden_size=hidden, layers=layers, heads=4, kv_heads=2)
    frame = pl.from_arrow(pa.Table.from_pylist(_records(), schema=RECORD_SCHEMA))
    cfg = load_config(None, {"format": {"tokenizer": str(model), "seq_len": seq_len}, "split": {"eval_fraction": 0.0}})
    manifest = build_shards(frame, work / "shards", cfg, progress=False)
    return model, work / "shards", manifest


def run_ours(args: argparse.Namespace) -> dict:
    """Our loop; steady-state figures from its own per-step metrics."""
    from trainer.config import TrainConfig
    from trainer.loop import train

    cfg = TrainConfig(
        model=args.model,
        shards=args.shards,
        output_dir=str(Path(args.work) / "ours"),
        max_steps=args.steps,
        micro_batch_size=args.micro,
        lr=1e-3,
        warmup_steps=3,
        cpu_threads=args.threads,
        resume=False,
        probe_memory=False,
        lora={"r": 16, "alpha": 32, "dropout": 0.05, "target_modules": TARGETS},
        eval={"enabled": False},
    )
    train(cfg)
    metrics = [json.loads(x) for x in (Path(cfg.output_dir) / "metrics.jsonl").read_text().splitlines()]
    steady = metrics[args.skip :]
    return {
        "tokens": sum(m["tokens"] for m in steady),
        "seconds": sum(m["step_time_s"] for m in steady),
        "mean_loss": sum(m["loss"] for m in metrics) / len(metrics),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def run_trl(args: argparse.Namespace) -> dict:
    """TRL SFTTrainer on the same documents; per-step wall time and tokens from a callback."""
    import numpy as np
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from trainer.data import read_manifest, read_split

    torch.set_num_threads(args.threads)
    split = read_split(args.shards, read_manifest(args.shards), "train")
    ids, masks = [], []
    for r in range(split.rows):
        start = 0
        for n in split.seq_lens[r]:
            ids.append(split.input_ids[r, start : start + n].tolist())
            masks.append(split.loss_mask[r, start : start + n].tolist())
            start += n
    data = Dataset.from_dict({"input_ids": ids, "assistant_masks": masks})
    steps: list[tuple[float, int]] = []

    class Clock(TrainerCallback):
        def on_step_begin(self, a, state, control, **kw):
            self.t0, self.n0 = time.perf_counter(), state.num_input_tokens_seen

        def on_step_end(self, a, state, control, **kw):
            steps.append((time.perf_counter() - self.t0, state.num_input_tokens_seen - self.n0))

    config = SFTConfig(
        output_dir=str(Path(args.work) / "trl"),
        max_steps=args.steps,
        per_device_train_batch_size=args.micro,
        gradient_accumulation_steps=1,
        learning_rate=1e-3,
        lr_scheduler_type="cosine",
        warmup_steps=3,
        max_length=args.seq_len,
        packing=True,
        packing_strategy="bfd",
        padding_free=True,
        gradient_checkpointing=False,
        logging_steps=10_000,
        save_strategy="no",
        report_to="none",
        dataloader_num_workers=0,
        use_cpu=True,
        bf16=False,
        fp16=False,
        seed=0,
        disable_tqdm=True,
        include_num_input_tokens_seen="all",
    )
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    trainer = SFTTrainer(
        model=model,
        args=config,
        train_dataset=data,
        processing_class=AutoTokenizer.from_pretrained(args.model),
        peft_config=LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules=TARGETS, task_type="CAUSAL_LM"),
        callbacks=[Clock()],
    )
    out = trainer.train()
    steady = steps[args.skip :]
    return {
        "tokens": int(np.sum([s[1] for s in steady])),
        "seconds": float(np.sum([s[0] for s in steady])),
        "mean_loss": out.training_loss,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def matmul_peak_gflops(threads: int) -> float:
    """Measured fp32 matmul throughput (GFLOP/s) on `threads` threads: the CPU stand-in for a datasheet peak."""
    import torch

    torch.set_num_threads(threads)
    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    for _ in range(3):
        a @ b
    t0, reps = time.perf_counter(), 20
    for _ in range(reps):
        a @ b
    return 2 * 1024**3 * reps / (time.perf_counter() - t0) / 1e9


def flops_per_token(model_dir: str, seq_len: int) -> float:
    """6N + 12·L·H·T with N = non-embedding parameters + LM head (PaLM-style MFU accounting)."""
    from transformers import AutoConfig

    c = AutoConfig.from_pretrained(model_dir)
    h, layers, inter, v = c.hidden_size, c.num_hidden_layers, c.intermediate_size, c.vocab_size
    kv = h // c.num_attention_heads * c.num_key_value_heads
    per_layer = h * h * 2 + h * kv * 2 + 3 * h * inter
    n = layers * per_layer + v * h
    return 6 * n + 12 * layers * h * seq_len


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--micro", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=1024)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--skip", type=int, default=2, help="warm-up steps left out of tokens/s")
    parser.add_argument("--child", choices=["ours", "trl"], help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--shards", help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        result = run_ours(args) if args.child == "ours" else run_trl(args)
        print("RESULT " + json.dumps(result))
        return

    from rich.console import Console
    from rich.table import Table

    console = Console()
    with tempfile.TemporaryDirectory(prefix="bench_train_") as tmp:
        work = Path(tmp)
        with console.status("building tokenizer, model and packed shards"):
            model, shards, manifest = build_data(work, args.seq_len, args.hidden, args.layers)
        fpt = flops_per_token(str(model), args.seq_len)
        peak = matmul_peak_gflops(args.threads)
        results = {}
        for name in ("ours", "trl"):
            with console.status(f"training: {name}"):
                cmd = [
                    sys.executable,
                    __file__,
                    "--child",
                    name,
                    "--model",
                    str(model),
                    "--shards",
                    str(shards),
                    "--work",
                    str(work),
                    "--steps",
                    str(args.steps),
                    "--micro",
                    str(args.micro),
                    "--seq-len",
                    str(args.seq_len),
                    "--threads",
                    str(args.threads),
                    "--skip",
                    str(args.skip),
                ]
                env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "PYTHONPATH": str(ROOT)}
                proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
                if proc.returncode != 0:
                    raise SystemExit(f"{name} failed:\n{proc.stderr[-4000:]}")
                line = next(x for x in proc.stdout.splitlines()[::-1] if x.startswith("RESULT "))
                results[name] = json.loads(line[len("RESULT ") :])

    table = Table(
        title=f"LoRA training, {args.steps} steps x {args.micro} rows x {args.seq_len} tokens, "
        f"{args.threads} thread(s), packing efficiency {manifest['packing_efficiency']:.3f}"
    )
    for col in ("trainer", "tokens/s", "peak RSS MiB", "mean train loss", "GFLOP/s", "MFU vs matmul peak"):
        table.add_column(col, justify="right")
    for name, r in results.items():
        tps = r["tokens"] / r["seconds"]
        table.add_row(
            name,
            f"{tps:,.0f}",
            f"{r['peak_rss_mb']:,.0f}",
            f"{r['mean_loss']:.4f}",
            f"{tps * fpt / 1e9:.2f}",
            f"{tps * fpt / 1e9 / peak:.1%}",
        )
    console.print(table)
    speedup = (results["ours"]["tokens"] / results["ours"]["seconds"]) / (
        results["trl"]["tokens"] / results["trl"]["seconds"]
    )
    mem = results["ours"]["peak_rss_mb"] / results["trl"]["peak_rss_mb"]
    console.print(f"speed-up vs TRL: {speedup:.2f}x (target >= 1.5x); peak RSS ours/TRL: {mem:.2f} (target <= 1.0)")
    console.print(f"FLOPs/token (6N + 12LHT): {fpt:,.0f}; measured fp32 matmul peak: {peak:.1f} GFLOP/s")


if __name__ == "__main__":
    main()
