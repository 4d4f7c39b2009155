"""One explicit LoRA training loop over packed shards (nanoGPT / torchtune style, no framework).

Read top to bottom, `train()` does:
1. checks before long work: manifest, checksums, tokenizer and chat-template hashes, seq_len vs the
   model's maximum, a non-empty train (and eval) split, then one probe forward+backward at the
   configured micro batch so an out-of-memory batch size fails in seconds ("lower micro_batch_size");
2. loads the base model (fp32 CPU / bf16 GPU / 4-bit QLoRA on CUDA) and wraps it with LoRA; a CPU
   run uses an explicit thread count (`cpu_threads`, default half the logical CPUs). Measured for
   SmolLM2-135M LoRA on the 2-vCPU build machine (BENCHMARKS.md): one thread trained faster than two,
   and fp32 faster than bf16 on a CPU without native bf16 (AVX512-BF16/AMX), forward 2x faster;
3. resumes from the newest checkpoint in `output_dir/checkpoints` when there is one: adapter
   weights, AdamW state, step (the schedule is a pure function of it), RNG states, data position;
4. per optimizer step: `grad_accum` micro batches of packed rows with `position_ids` and no 2D
   mask; the loss is the SUM of token losses divided by the trainable tokens of the whole
   accumulated (and, under DDP, global) batch, so accumulation and data parallelism equal one big
   batch; gradient clipping; NaN/inf loss or gradient norm stops the run with an error naming the
   last good checkpoint, which is never overwritten;
5. logs one JSON line per step (loss, lr, grad norm, tokens/s, peak memory, packing efficiency)
   with a rich progress bar; writes atomic checkpoints every `checkpoint_every` steps;
6. saves the adapter (safetensors, `PeftModel.from_pretrained`-loadable), optionally the merged
   model, and runs the evaluation into `eval.json`.

Under `torchrun` the same code runs DDP (gloo on CPU, nccl on GPU): each rank reads its slice of
every global micro-step, only rank 0 writes files and evaluates (other ranks wait at a barrier).
Resuming reads checkpoints from `output_dir` on every rank, so multi-node runs need a shared disk.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import resource
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from trainer.config import TrainConfig
from trainer.data import (
    IGNORE_INDEX,
    RowOrder,
    make_batch,
    prepare_run,
)
from trainer.losses import TokenLoss
from trainer.model import (
    adapter_merged,
    apply_cpu_threads,
    count_params,
    load_base_model,
    merge_adapter,
    resolve_runtime,
    wrap_lora,
)
from trainer.schedule import lr_at

# Fields that change what a resumed run computes; the rest (eval, checkpoint cadence) may change.
RESUME_KEYS = (
    "model", "shards", "qlora", "dtype", "lora", "lr", "min_lr_ratio", "warmup_steps", "weight_decay", "betas",
    "max_steps", "epochs", "micro_batch_size", "grad_accum", "max_grad_norm", "seed",
)


class TrainError(Exception):
    """The run cannot start or cannot continue; the message says where and what to do."""


class TrainingDivergedError(TrainError):
    """Loss or gradient norm became NaN/inf; the last good checkpoint is kept untouched."""


def dist_info() -> tuple[int, int, int]:
    """(rank, world size, local rank) from the torchrun environment; (0, 1, 0) when run plainly."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0))


def total_steps_for(cfg: TrainConfig, train_rows: int, world: int) -> int:
    """Optimizer steps of the run: `max_steps`, or enough to see `epochs` x the train rows."""
    if cfg.max_steps is not None:
        return cfg.max_steps
    rows_per_step = cfg.micro_batch_size * cfg.grad_accum * world
    return max(1, math.ceil(cfg.epochs * train_rows / rows_per_step))


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory so far: CUDA max allocated on GPU, process max RSS on CPU (MiB)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def accumulate_gradients(
    loss_fn: torch.nn.Module,
    micro_batches: list[dict[str, torch.Tensor]],
    global_tokens: int,
    world: int = 1,
) -> torch.Tensor:
    """Forward+backward every micro batch with loss = sum of token losses / `global_tokens`.

    Returns the (local) summed token loss, detached. Under DDP gradients are averaged over ranks,
    so the loss is scaled by `world` to keep the normalisation by the global token count; only the
    last micro batch synchronises gradients.
    """
    scale = world / max(global_tokens, 1)
    loss_sum = torch.zeros((), dtype=torch.float64)
    for i, batch in enumerate(micro_batches):
        last = i == len(micro_batches) - 1
        sync = contextlib.nullcontext() if last or not hasattr(loss_fn, "no_sync") else loss_fn.no_sync()
        with sync:
            loss = loss_fn(batch["input_ids"], batch["position_ids"], batch["targets"])
            (loss * scale).backward()
        loss_sum += loss.detach().double().cpu()
    return loss_sum


def _rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _resume_signature(cfg: TrainConfig) -> dict[str, Any]:
    dumped = cfg.model_dump(mode="json")
    return {k: dumped[k] for k in RESUME_KEYS}


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    """Newest complete checkpoint directory (`checkpoints/step-NNNNNNNN`), or None."""
    root = Path(output_dir) / "checkpoints"
    done = sorted(p for p in root.glob("step-*") if (p / "state.json").is_file()) if root.is_dir() else []
    return done[-1] if done else None


def save_checkpoint(
    out_dir: Path, step: int, model: Any, optimizer: torch.optim.Optimizer, rng: list[dict[str, Any]],
    cfg: TrainConfig, keep: int,
) -> Path:
    """Write adapter + optimizer + RNG + step/data position to a temp dir, then rename it into place."""
    from peft import get_peft_model_state_dict
    from safetensors.torch import save_file

    root = out_dir / "checkpoints"
    final = root / f"step-{step:08d}"
    tmp = root / f".tmp-step-{step:08d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    weights = {k: v.detach().cpu().contiguous() for k, v in get_peft_model_state_dict(model).items()}
    save_file(weights, str(tmp / "adapter_model.safetensors"))
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    torch.save(rng, tmp / "rng.pt")
    state = {
        "step": step,
        "scheduler": {"step": step},
        "data_position": {"micro_step": step * cfg.grad_accum},
        "resume_signature": _resume_signature(cfg),
    }
    (tmp / "state.json").write_text(json.dumps(state, indent=2, sort_keys=True), encoding="utf-8")
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    for old in sorted(p for p in root.glob("step-*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(path: Path, model: Any, optimizer: torch.optim.Optimizer, cfg: TrainConfig, rank: int) -> int:
    """Restore adapter, optimizer and this rank's RNG from `path`; returns the step to continue from."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    state = json.loads((path / "state.json").read_text(encoding="utf-8"))
    if state["resume_signature"] != _resume_signature(cfg):
        changed = sorted(k for k in RESUME_KEYS if state["resume_signature"].get(k) != _resume_signature(cfg)[k])
        raise TrainError(
            f"{path}: checkpoint was made with different settings ({', '.join(changed)}); "
            "restore them, use a new output_dir, or set resume: false"
        )
    set_peft_model_state_dict(model, load_file(str(path / "adapter_model.safetensors")))
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=False))
    rng = torch.load(path / "rng.pt", weights_only=False)
    _set_rng_state(rng[rank] if rank < len(rng) else rng[0])
    return int(state["step"])


def _gathered_rng(world: int) -> list[dict[str, Any]]:
    if world == 1:
        return [_rng_state()]
    states: list[Any] = [None] * world
    dist.all_gather_object(states, _rng_state())
    return states


def _probe_memory(loss_fn: TokenLoss, batch: dict[str, torch.Tensor], cfg: TrainConfig) -> None:
    """One forward+backward at full micro batch so an OOM surfaces now, with a message that says what to do."""
    try:
        loss_fn(batch["input_ids"], batch["position_ids"], batch["targets"]).backward()
    except (torch.OutOfMemoryError, RuntimeError) as exc:
        text = str(exc).lower()
        if not isinstance(exc, torch.OutOfMemoryError) and "out of memory" not in text and "allocate" not in text:
            raise
        raise TrainError(
            f"micro_batch_size {cfg.micro_batch_size} x seq_len {batch['input_ids'].shape[1]} runs out of memory; "
            "lower micro_batch_size (raise grad_accum to keep the batch) or enable gradient_checkpointing"
        ) from exc
    finally:
        for p in loss_fn.parameters():
            p.grad = None


def train(cfg: TrainConfig, on_step: Callable[[int, dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Train a LoRA adapter as configured; returns a summary (paths, steps, final loss, eval overall).

    `on_step(step, metrics)` is called after each optimizer step on every rank (tests use it to
    interrupt a run; the lead's loop may use it for live reporting).
    """
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    from trainer.evaluate import evaluate_split, extra_evals, write_eval

    rank, world, local_rank = dist_info()
    runtime = resolve_runtime(cfg, local_rank)
    apply_cpu_threads(cfg, runtime)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if runtime.device.type == "cuda" else "gloo")
    out_dir = Path(cfg.output_dir)
    manifest, tokenizer, train_split, eval_split = prepare_run(cfg)
    total_steps = total_steps_for(cfg, train_split.rows, world)

    torch.manual_seed(cfg.seed)
    model = wrap_lora(load_base_model(cfg, runtime), cfg)
    model.train()
    loss_fn = TokenLoss(model)
    order = RowOrder(train_split.rows, cfg.seed)
    if cfg.probe_memory:
        _probe_memory(loss_fn, make_batch(train_split, order.micro_rows(0, cfg.micro_batch_size), runtime.device), cfg)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)

    start_step = 0
    resumed_from = latest_checkpoint(out_dir) if cfg.resume else None
    if resumed_from is not None:
        start_step = load_checkpoint(resumed_from, model, optimizer, cfg, rank)
    else:
        torch.manual_seed(cfg.seed + rank)
        np.random.seed(cfg.seed + rank)
        random.seed(cfg.seed + rank)
    train_fn: torch.nn.Module = loss_fn
    if world > 1:
        train_fn = torch.nn.parallel.DistributedDataParallel(
            loss_fn, device_ids=[runtime.device.index] if runtime.device.type == "cuda" else None
        )

    writer = rank == 0
    if writer:
        out_dir.mkdir(parents=True, exist_ok=True)
    metrics_path = out_dir / "metrics.jsonl"
    if writer and metrics_path.exists():
        # Steps logged after the checkpoint we resume from are re-run, so their lines go.
        kept = [x for x in metrics_path.read_text(encoding="utf-8").splitlines()
                if x.strip() and json.loads(x)["step"] <= start_step]
        metrics_path.write_text("".join(x + "\n" for x in kept), encoding="utf-8")
    total_params, trainable_params = count_params(model)
    last_good = str(resumed_from) if resumed_from else None
    last: dict[str, Any] = {}
    progress = Progress(
        TextColumn("train"), BarColumn(), TextColumn("{task.completed}/{task.total} loss {task.fields[loss]}"),
        TimeRemainingColumn(), disable=not writer,
    )
    with progress:
        task = progress.add_task("train", total=total_steps, completed=start_step, loss="-")
        for step in range(start_step, total_steps):
            t0 = time.perf_counter()
            lr = lr_at(step, base_lr=cfg.lr, warmup_steps=cfg.warmup_steps, total_steps=total_steps,
                       min_lr_ratio=cfg.min_lr_ratio)
            for group in optimizer.param_groups:
                group["lr"] = lr
            first_micro = step * cfg.grad_accum
            batches = [
                make_batch(train_split, order.micro_rows(first_micro + i, cfg.micro_batch_size, rank, world),
                           runtime.device)
                for i in range(cfg.grad_accum)
            ]
            counts = torch.tensor(
                [sum(int((b["targets"] != IGNORE_INDEX).sum()) for b in batches),
                 sum(int(b["real_tokens"]) for b in batches)], dtype=torch.float64,
            )
            if world > 1:
                dist.all_reduce(counts)
            global_tokens, real_tokens = int(counts[0]), int(counts[1])
            loss_sum = accumulate_gradients(train_fn, batches, global_tokens, world)
            if world > 1:
                dist.all_reduce(loss_sum)
            grad_norm = (
                torch.nn.utils.clip_grad_norm_(trainable, cfg.max_grad_norm)
                if cfg.max_grad_norm is not None
                else torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in trainable if p.grad is not None]))
            )
            loss = float(loss_sum) / max(global_tokens, 1)
            if not (math.isfinite(loss) and math.isfinite(float(grad_norm))):
                raise TrainingDivergedError(
                    f"step {step + 1}: loss {loss} / grad norm {float(grad_norm)} is not finite; stopped without "
                    f"saving. Last good checkpoint: {last_good or 'none'}. Lower lr, or check the shards"
                )
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            elapsed = time.perf_counter() - t0
            rows = cfg.micro_batch_size * cfg.grad_accum * world
            last = {
                "step": step + 1,
                "loss": round(loss, 6),
                "lr": lr,
                "grad_norm": round(float(grad_norm), 6),
                "trainable_tokens": global_tokens,
                "tokens": real_tokens,
                "tokens_per_s": round(real_tokens / elapsed, 1),
                "trainable_tokens_per_s": round(global_tokens / elapsed, 1),
                "peak_mem_mb": round(peak_memory_mb(runtime.device), 1),
                "packing_efficiency": round(real_tokens / (rows * train_split.seq_len), 4),
                "step_time_s": round(elapsed, 4),
            }
            done = step + 1
            if cfg.checkpoint_every and done % cfg.checkpoint_every == 0 and done < total_steps:
                rng = _gathered_rng(world)
                if writer:
                    last_good = str(save_checkpoint(out_dir, done, model, optimizer, rng, cfg, cfg.keep_checkpoints))
                if world > 1:
                    dist.barrier()
            if writer:
                with metrics_path.open("a", encoding="utf-8") as fh:
                    fh.write(json.dumps(last, sort_keys=True) + "\n")
                progress.update(task, advance=1, loss=f"{loss:.4f}")
            if cfg.eval.every and done % cfg.eval.every == 0 and done < total_steps and eval_split is not None:
                if writer:
                    model.eval()
                    interim = evaluate_split(loss_fn, eval_split, cfg.eval.batch_size, cfg.eval.chunk_tokens,
                                             runtime.device)
                    model.train()
                    with metrics_path.open("a", encoding="utf-8") as fh:
                        fh.write(json.dumps({"step": done, "eval_loss": interim["overall"]["loss"]}) + "\n")
                if world > 1:
                    dist.barrier()
            if on_step is not None:
                on_step(done, last)

    result: dict[str, Any] = {
        "output_dir": str(out_dir),
        "steps": total_steps,
        "resumed_from": str(resumed_from) if resumed_from else None,
        "final": last,
        "params": {"total": total_params, "trainable": trainable_params},
    }
    if writer:
        adapter_dir = out_dir / "adapter"
        model.save_pretrained(adapter_dir, safe_serialization=True)
        tokenizer.save_pretrained(adapter_dir)
        result["adapter"] = str(adapter_dir)
        if eval_split is not None:
            model.eval()
            with adapter_merged(model), torch.no_grad():
                report = evaluate_split(loss_fn, eval_split, cfg.eval.batch_size, cfg.eval.chunk_tokens,
                                        runtime.device)
                report.update(extra_evals(model, tokenizer, cfg.eval, runtime.device))
            report.update(model=cfg.model, adapter=str(adapter_dir), shards=cfg.shards, step=total_steps,
                          shards_config_hash=manifest.get("config_hash"))
            result["eval"] = str(write_eval(report, out_dir / "eval.json"))
            result["eval_overall"] = report["overall"]
        if cfg.merge:
            merged_dir = out_dir / "merged"
            merge_adapter(model).save_pretrained(merged_dir, safe_serialization=True)
            tokenizer.save_pretrained(merged_dir)
            result["merged"] = str(merged_dir)
    if world > 1:
        dist.barrier()
    return result
