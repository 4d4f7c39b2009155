"""Entry functions for `curator train` / `curator eval`, and a standalone `python -m trainer.cli`.

`train_main` and `eval_main` take a YAML path or a TrainConfig and return a result dict; the same
command under `torchrun --nproc_per_node N -m trainer.cli train cfg.yaml` runs DDP.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from trainer.config import TrainConfig, load_train_config


def train_main(config: str | Path | TrainConfig, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train the LoRA adapter the config describes; returns paths, steps, final metrics and eval summary."""
    from trainer.loop import train

    return train(_cfg(config, overrides))


def eval_main(
    config: str | Path | TrainConfig,
    adapter: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
    out: str | Path | None = None,
) -> dict[str, Any]:
    """Evaluate base + adapter (default `output_dir/adapter`; "none": the base alone) into a schema-checked file.

    The file is `out`, else `output_dir/eval.json` (`eval_base.json` for the base model alone).
    """
    import torch

    from trainer.evaluate import evaluate_split, generate, write_eval
    from trainer.loop import prepare
    from trainer.losses import TokenLoss
    from trainer.model import load_base_model, resolve_runtime

    cfg = _cfg(config, overrides)
    cfg = cfg.model_copy(update={"eval": cfg.eval.model_copy(update={"enabled": True})})
    if cfg.cpu_threads is not None:
        torch.set_num_threads(cfg.cpu_threads)
    manifest, tokenizer, _, eval_split = prepare(cfg)
    runtime = resolve_runtime(cfg)
    model = load_base_model(cfg, runtime)
    adapter_dir = Path(adapter) if adapter is not None else Path(cfg.output_dir) / "adapter"
    if str(adapter) != "none":
        if not (adapter_dir / "adapter_config.json").is_file():
            raise FileNotFoundError(f"{adapter_dir}: no adapter_config.json; train first or pass adapter='none'")
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter_dir)
    model.eval()
    with torch.no_grad():
        report = evaluate_split(TokenLoss(model), eval_split, cfg.eval.batch_size, cfg.eval.chunk_tokens,
                                runtime.device)
    if cfg.eval.prompts:
        report["generations"] = generate(model, tokenizer, cfg.eval.prompts, cfg.eval.max_new_tokens, runtime.device)
    report.update(model=cfg.model, adapter=None if str(adapter) == "none" else str(adapter_dir), shards=cfg.shards,
                  shards_config_hash=manifest.get("config_hash"))
    base_only = str(adapter) == "none"
    target = Path(out) if out is not None else Path(cfg.output_dir) / ("eval_base.json" if base_only else "eval.json")
    target.parent.mkdir(parents=True, exist_ok=True)
    path = write_eval(report, target)
    return {"eval": str(path), "overall": report["overall"], "per_category": report["per_category"]}


def _cfg(config: str | Path | TrainConfig, overrides: dict[str, Any] | None) -> TrainConfig:
    return load_train_config(config, overrides)


def main(argv: list[str] | None = None) -> int:
    """`python -m trainer.cli {train,eval} CONFIG.yaml [--adapter DIR]`: prints the result as JSON."""
    parser = argparse.ArgumentParser(prog="trainer", description=__doc__)
    parser.add_argument("command", choices=["train", "eval"])
    parser.add_argument("config", help="YAML trainer config")
    parser.add_argument("--adapter", default=None, help="eval: adapter dir, or 'none' for the base model")
    args = parser.parse_args(argv)
    result = train_main(args.config) if args.command == "train" else eval_main(args.config, args.adapter)
    if int(os.environ.get("RANK", 0)) == 0:
        print(json.dumps(result, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
