"""Typed trainer configuration (`curator train` / `curator eval` read it from YAML).

A YAML file names only what differs from the defaults; unknown keys are errors that name the key
path, so a typo never silently does nothing. `dtype: auto` means fp32 on CPU and bf16 on GPU; CPU
runs always set an explicit thread count (`cpu_threads`, default half the logical CPUs), so the same
run computes the same numbers in any process. Both defaults are measured in BENCHMARKS.md.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from curator.config import ConfigError, read_yaml_mapping, validate_as


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LoraConfig(_Section):
    """LoRA adapter shape; `target_modules` None means auto-detected from the architecture."""

    r: int = Field(16, ge=1)
    alpha: float = Field(32.0, gt=0)
    dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: list[str] | None = Field(None, description="Module names to adapt; None: auto-detect.")


class EvalConfig(_Section):
    """Evaluation on the eval split after training (and every `every` steps when > 0)."""

    enabled: bool = True
    batch_size: int = Field(4, ge=1, description="Packed rows per eval forward.")
    chunk_tokens: int = Field(2048, ge=16, description="Tokens per chunk of the streamed cross-entropy.")
    every: int = Field(0, ge=0, description="Also evaluate every N optimizer steps (0: only at the end).")
    prompts: list[str] = Field(default_factory=list, description="User prompts to generate answers for.")
    max_new_tokens: int = Field(64, ge=1, description="Longest generated answer (prompts and generate_records).")
    generate_batch_size: int = Field(8, ge=1, description="Prompts per batched greedy generation (left padded).")
    generate_batch_tokens: int = Field(
        2048, ge=1, description="Most padded prompt tokens per generation batch: long prompts go in smaller batches.")
    generate_records: str | None = Field(
        None, description="Parquet of canonical eval records to answer and score (chrF, exact match, tool calls)."
    )
    heldout_records: str | None = Field(
        None, description="Parquet of canonical records no round trains on: their answer loss is the forgetting check."
    )


class TrainConfig(_Section):
    """Everything one LoRA run needs: model, shards, optimisation, checkpoints, evaluation."""

    model: str = Field(..., description="Local model dir or hub id of the base causal LM.")
    shards: str = Field(..., description="Directory with manifest.json and train/ eval/ Parquet shards.")
    output_dir: str = Field(..., description="Adapter, checkpoints, metrics.jsonl and eval.json go here.")
    trust_remote_code: bool = False
    device: Literal["auto", "cpu", "cuda"] = "auto"
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    qlora: bool = Field(False, description="Load the base model in 4-bit (bitsandbytes, CUDA only).")
    lora: LoraConfig = Field(default_factory=LoraConfig)
    lr: float = Field(2e-4, gt=0)
    min_lr_ratio: float = Field(0.1, ge=0, le=1, description="Cosine floor as a fraction of lr.")
    warmup_steps: int = Field(10, ge=0)
    weight_decay: float = Field(0.0, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)
    max_steps: int | None = Field(None, ge=1, description="Optimizer steps; None: derived from epochs.")
    epochs: float = Field(1.0, gt=0)
    micro_batch_size: int = Field(1, ge=1, description="Packed rows per forward, per process.")
    grad_accum: int = Field(1, ge=1)
    max_grad_norm: float | None = Field(1.0, gt=0, description="Clip the global grad norm; None: no clip.")
    seed: int = 0
    gradient_checkpointing: bool = False
    checkpoint_every: int = Field(0, ge=0, description="Save a resumable checkpoint every N steps (0: never).")
    keep_checkpoints: int = Field(2, ge=1)
    resume: bool = Field(True, description="Resume from the latest checkpoint in output_dir if there is one.")
    merge: bool = Field(False, description="Also write the base model with the adapter merged in.")
    eval: EvalConfig = Field(default_factory=EvalConfig)
    cpu_threads: int | None = Field(
        None, ge=1, description="torch intra-op threads on CPU; None: half the logical CPUs (trainer.model).")
    probe_memory: bool = Field(True, description="Run one forward+backward before training to catch OOM early.")

    @model_validator(mode="after")
    def _qlora_lora(self) -> TrainConfig:
        if self.qlora and self.dtype == "float32":
            raise ValueError("qlora computes in bf16/fp16; set dtype to auto, bfloat16 or float16")
        return self


class TrainConfigError(ConfigError):
    """A trainer config that does not validate; the message names each bad key."""


def load_train_config(path: str | Path | TrainConfig, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """Read a YAML trainer config (or pass one through), apply overrides, and name every bad key."""
    if isinstance(path, TrainConfig):
        return path.model_copy(update=overrides or {}) if overrides else path
    try:
        data = read_yaml_mapping(path, "trainer config")
        data.update(overrides or {})
        return validate_as(TrainConfig, data, str(path))
    except ConfigError as exc:
        raise TrainConfigError(str(exc)) from exc
