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
    """Evaluate base + adapter (default `output_dir/adapter`; "none": the base alone); see `evaluate_model`."""
    from trainer.evaluate import evaluate_model

    return evaluate_model(_cfg(config, overrides), adapter=adapter, out=out)


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
