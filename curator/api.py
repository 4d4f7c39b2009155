"""The public Python API: curate, pack, export, train, evaluate and loop; typed configs in, result objects out.

The command line is argument parsing and printing over these functions, so a script or a notebook
gets exactly what `curator curate ...` writes (same files, same bytes). Each function takes the
typed config the YAML files hold (or the path of such a file), writes its outputs atomically and
returns a small result object with the paths and the report data. Progress bars are optional;
nothing here prints a summary (the CLI does).

    from curator import api
    run = api.curate("curate.yaml", "out/curated")
    shards = api.pack(run.config, run, "out/shards", tokenizer="path/to/model")
    chats = api.export(run.config, run, "out/openai", format="openai")  # or "sharegpt", "hf"
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from curator.config import CurateConfig, InputSpec, load_config
from curator.ingest.base import UnreadableInput
from curator.ingest.inputs import Skipped, preflight, scan_inputs
from curator.io import dir_lock
from curator.select.loop import LoopConfig, load_loop_config

__all__ = [
    "CurateResult",
    "EvalResult",
    "ExportResult",
    "LoopResult",
    "PackResult",
    "TrainResult",
    "curate",
    "evaluate",
    "export",
    "kept_parts",
    "loop",
    "pack",
    "train",
]


@dataclass(frozen=True)
class CurateResult:
    """What `curate` wrote: the output dir, its kept parts and the report data (`report.json`)."""

    out: Path
    config: CurateConfig
    report: dict[str, Any]
    kept_parts: tuple[Path, ...]
    retries: dict[str, int] = field(default_factory=dict)
    skipped: tuple[Skipped, ...] = ()  # files of input directories not read, with the reason (also in the report)

    @property
    def counts(self) -> dict[str, int]:
        """read = kept + dropped + quarantined, as the report reconciles them."""
        acct = self.report["accounting"]
        return {k: int(acct[k]) for k in ("read", "kept", "dropped", "quarantined")}


@dataclass(frozen=True)
class PackResult:
    """What `pack` wrote: the shard dir and its manifest (`schemas/manifest.schema.json`)."""

    out: Path
    manifest: dict[str, Any]


@dataclass(frozen=True)
class ExportResult:
    """What `export` wrote: the export dir and its summary (`export.json`: files, records per split, notes)."""

    out: Path
    summary: dict[str, Any]

    @property
    def files(self) -> dict[str, Path]:
        """Each split's JSONL file (openai, sharegpt) or dataset dir (hf)."""
        return {name: self.out / s["path"] for name, s in self.summary["splits"].items()}

    @property
    def counts(self) -> dict[str, int]:
        """Records written per split."""
        return {name: int(s["records"]) for name, s in self.summary["splits"].items()}


@dataclass(frozen=True)
class TrainResult:
    """What `train` wrote: the adapter dir and the trainer's summary (steps, last metrics, eval overall)."""

    output_dir: Path
    adapter: Path
    summary: dict[str, Any]


@dataclass(frozen=True)
class EvalResult:
    """What `evaluate` wrote: `eval.json` (`schemas/eval.schema.json`) and its overall/per-category figures."""

    path: Path
    overall: dict[str, Any]
    per_category: dict[str, Any]


@dataclass(frozen=True)
class LoopResult:
    """What `loop` wrote: the loop dir and the loop report data (`loop_report.json`)."""

    out: Path
    report: dict[str, Any]


def _curate_config(config: CurateConfig | str | Path | None) -> CurateConfig:
    if isinstance(config, CurateConfig):
        return config.model_copy(deep=True)
    return load_config(config)


def curate(
    config: CurateConfig | str | Path | None,
    out: str | Path,
    *,
    inputs: Sequence[str | Path] | None = None,
    format: str | None = None,
    workers: int = 1,
    fresh: bool = False,
    engine: str = "local",
    ray_address: str | None = None,
    progress: bool = True,
) -> CurateResult:
    """Ingest, clean, dedup and scrub the inputs into `out` (kept/, dropped/, quarantine, report).

    `inputs` (files or dirs) replace the config's `inputs:`; `format` forces one reader for all of
    them. Files of a directory that hold no conversations are skipped and listed (`skipped`, and
    the report). Every input is checked before any work, and a killed run resumes when called again.
    """
    from curator.report.curate import build_report, write_report
    from curator.report.progress import RichProgress

    cfg = _curate_config(config)
    skipped: list[Skipped] = []
    if inputs:
        scan = scan_inputs(inputs)
        cfg.inputs = [InputSpec(path=p, format=format) for p in scan.files]
        skipped = scan.skipped
    elif format:
        for spec in cfg.inputs:
            spec.format = format
    if not cfg.inputs:
        raise UnreadableInput("no inputs: name files after `curate` or list them under `inputs:` in the config")
    preflight(cfg)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with dir_lock(out):
        with RichProgress() if progress else contextlib.nullcontext() as bars:
            run = _make_engine(engine, cfg, out, workers, ray_address, bars).run(fresh=fresh)
        report = build_report(run, cfg.model_dump(mode="json"), skipped=skipped)
        write_report(report, out)
        if cfg.write_jsonl:
            _write_kept_jsonl(run.kept_parts, out / "kept.jsonl")
    return CurateResult(out, cfg, report, tuple(run.kept_parts), dict(getattr(run, "retries", None) or {}),
                        tuple(skipped))


def _make_engine(engine: str, cfg: CurateConfig, out: Path, workers: int, ray_address: str | None,
                 progress: Any) -> Any:
    """The in-process LocalEngine, or the RayEngine (extra `ray`); the local path never imports ray."""
    if engine == "local":
        from curator.engines.local import LocalEngine

        return LocalEngine(cfg, out, workers=workers, progress=progress)
    if engine != "ray":
        raise ValueError(f"engine {engine!r}: use 'local' or 'ray'")
    try:
        from curator.engines.ray import RayEngine
    except ImportError as exc:
        raise UnreadableInput(f"engine ray needs Ray: pip install 'sft-curator[ray]' ({exc})") from exc
    return RayEngine(cfg, out, address=ray_address, num_cpus=None if ray_address else workers, progress=progress)


def _write_kept_jsonl(parts: Sequence[Path], path: Path) -> None:
    import polars as pl

    from curator.io import atomic_path

    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        for part in parts:
            for rec in pl.read_parquet(part).to_dicts():
                fh.write(json.dumps(rec, ensure_ascii=False, default=str) + "\n")


def kept_parts(kept: str | Path | CurateResult | Sequence[Path]) -> list[Path]:
    """The kept-record Parquet files of a curate output dir, a CurateResult, or Parquet file(s)."""
    if isinstance(kept, CurateResult):
        return list(kept.kept_parts)
    if not isinstance(kept, str | Path):
        return [Path(p) for p in kept]
    path = Path(kept)
    if path.is_file():
        return [path]
    parts = sorted((path / "kept").glob("*.parquet")) if (path / "kept").is_dir() else sorted(path.glob("*.parquet"))
    if not parts:
        raise UnreadableInput(
            f"{path}: no kept records found (expected a `curator curate` output dir or Parquet files)"
        )
    return parts


def pack(
    config: CurateConfig | str | Path | None,
    kept: str | Path | CurateResult | Sequence[Path],
    out: str | Path,
    *,
    tokenizer: str | Path | None = None,
    seq_len: int | None = None,
    selection: str | Path | None = None,
    progress: bool = True,
) -> PackResult:
    """Balance, split, render with the chat template and pack kept records into shards + manifest in `out`.

    `tokenizer`, `seq_len` and `selection` (a feedback selection file) override the config's
    `format.tokenizer`, `format.seq_len` and `balance.weights_file`.
    """
    from curator.format.shards import build_shards, summary_rows
    from curator.report.pack import write_pack_report

    cfg = _curate_config(config)
    if tokenizer is not None:
        cfg.format.tokenizer = str(tokenizer)
    if seq_len is not None:
        cfg.format.seq_len = seq_len
    if selection is not None:
        cfg.balance.weights_file = str(selection)
    out = Path(out)
    manifest = build_shards(kept_parts(kept), out, cfg, progress=progress)
    write_pack_report(manifest, summary_rows(manifest), out)
    return PackResult(out, manifest)


def export(
    config: CurateConfig | str | Path | None,
    kept: str | Path | CurateResult | Sequence[Path],
    out: str | Path,
    *,
    format: str,
    progress: bool = True,
) -> ExportResult:
    """Write kept records as OpenAI chat JSONL, ShareGPT (LLaMA-Factory, Axolotl) or a HF dataset dir in `out`.

    The config's `split` and `seed` give each record the side `pack` gives it, so an export's eval
    split is the shards' eval split. `format`: "openai", "sharegpt" or "hf" (see curator/format/export.py).
    """
    from curator.format.export import write_export

    out = Path(out)
    return ExportResult(out, write_export(kept_parts(kept), out, _curate_config(config), format, progress=progress))


def train(config: Any, overrides: dict[str, Any] | None = None) -> TrainResult:
    """Train the LoRA adapter a trainer config (TrainConfig or YAML path) describes; resumes from checkpoints."""
    from trainer.config import load_train_config
    from trainer.loop import train as train_loop

    cfg = load_train_config(config, overrides)
    summary = train_loop(cfg)
    return TrainResult(Path(cfg.output_dir), Path(cfg.output_dir) / "adapter", summary)


def evaluate(
    config: Any, *, adapter: str | Path | None = None, out: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
) -> EvalResult:
    """Evaluate base + adapter (default `output_dir/adapter`; "none": the base model alone) into eval.json."""
    from trainer.config import load_train_config
    from trainer.evaluate import evaluate_model

    result = evaluate_model(load_train_config(config, overrides), adapter=adapter, out=out)
    return EvalResult(Path(result["eval"]), result["overall"], result["per_category"])


def loop(config: LoopConfig | str | Path, out: str | Path, *, workers: int = 1, progress: bool = True) -> LoopResult:
    """Curate once, then rounds of select -> pack -> train -> evaluate -> feedback; resumes where it stopped.

    Each round trains from the same base model on the same token budget and is evaluated on the
    same held-out split, so differences between rounds are differences of data.
    """
    from curator.report.loop import write_loop_report
    from curator.select import loop as rounds
    from curator.select.feedback import write_selection

    cfg = config if isinstance(config, LoopConfig) else load_loop_config(config)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rounds.check_state(cfg, out / "loop_state.json")
    curated = out / "curated"
    converting = None
    if not (curated / "report.json").exists():
        converting = rounds.start_base_model(cfg.model)  # a fresh machine's one-time conversion overlaps curate
        curate(cfg.curate, curated, workers=workers, progress=progress)
    kept = rounds.kept_records(curated)
    train_pool = rounds.train_side(kept, cfg.curate)
    rounds.finish_base_model(converting, progress)
    model_dir = rounds.ensure_base_model(cfg.model, train_pool, out / "base", cfg.curate.seed)
    heldout = None
    if cfg.heldout:
        if not (out / "heldout" / "report.json").exists():
            curate(rounds.heldout_curate_config(cfg), out / "heldout", workers=workers, progress=progress)
        heldout = rounds.kept_records(out / "heldout")
    rounds.write_initial_selection(cfg, out)
    summaries: list[dict[str, Any]] = []
    base_eval: dict[str, Any] | None = None
    evals: dict[str, str] = {}
    for r in range(cfg.rounds):
        rd = rounds.round_dir(out, r)
        shards = rd / "shards"
        if not (shards / "manifest.json").exists():
            pack(rounds.round_pack_config(cfg, r, model_dir, out), curated, shards, progress=progress)
        if r == 0:
            evals = rounds.prepare_eval_records(cfg, out, kept, train_pool, heldout)
        train_cfg = rounds.train_config(cfg, model_dir, shards, rd / "train", evals)
        if base_eval is None:
            if not (out / "base_eval.json").exists():
                evaluate(train_cfg, adapter="none", out=out / "base_eval.json")
            base_eval = rounds.read_json(out / "base_eval.json")
        if not (rd / "train" / "eval.json").exists():
            train(train_cfg)
        summary = rounds.round_summary(
            r, rd, rounds.read_json(rd / "selection.json"), rounds.read_json(shards / "manifest.json"),
            rounds.read_json(rd / "train" / "eval.json"), summaries[-1] if summaries else None,
        )
        rounds.write_round(summary, rd)
        summaries.append(summary)
        nxt = rounds.round_dir(out, r + 1) / "selection.json"
        if r + 1 < cfg.rounds and not nxt.exists():
            write_selection(rounds.next_selection(cfg, r, out, train_cfg, train_pool, base_eval), nxt)
    evals_by_round = [rounds.read_json(rounds.round_dir(out, r) / "train" / "eval.json") for r in range(cfg.rounds)]
    verdict = rounds.compare(evals_by_round[0], evals_by_round[-1], cfg.feedback.noise_z)
    report = write_loop_report(out, summaries, base_eval or {}, cfg.model_dump(mode="json"), verdict)
    return LoopResult(out, report)
