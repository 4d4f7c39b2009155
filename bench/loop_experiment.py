"""Does the feedback loop help? (issue 7, point 5): feedback vs uniform random vs static balancing.

At the same training-token budget per round, the same tiny pretrained base and the same held-out
eval split, for every seed in `--seeds` (the seed is the trainer's: LoRA init and batch order):
  (a) feedback  `api.loop` with `--rounds` rounds; round 0 is the static balance (c), every later
                round trains on the selection the previous round's evaluation wrote; we report the
                final round;
  (b) uniform   balance.temperature 1 and no weights, through the loop's own `api.pack` and
                `trainer.loop.train` (no pool scoring): records sampled without regard to category
                up to the budget (the natural mix);
  (c) static    temperature-flattened balance (T=1000: every category's share is 0.2 within 0.2%),
                i.e. round 0 of (a); shared by every feedback variant of the same seed.
Data: real files from ../shared/data (five categories with skewed pool sizes, see SUBSETS), written
as subsets to the work dir (never into the repository: code_alpaca is test-only). Curated once
(dedup on, PII off for speed); tokenizer + tiny Llama built and pretrained once on the train side.

    .venv/bin/python bench/loop_experiment.py                       # FeedbackConfig defaults, seeds 0 1 2
    .venv/bin/python bench/loop_experiment.py --seeds 1 --variant conservative --eta 0.5 --floor 0.15
    .venv/bin/python bench/loop_experiment.py --from-disk --variant conservative    # collect + print
Raw results: bench/results/loop_experiment/VARIANT__seedsS.json per process, merged into VARIANT.json.
Processes (one per seed, or other variants) share the curation, the base model, round 0 and the
uniform arm through the work dir; `--from-disk` collects loops stopped after their final eval.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from rich.console import Console
from rich.table import Table

from curator import api
from curator.config import CurateConfig
from curator.select.loop import (
    LoopConfig,
    ModelSpec,
    ensure_base_model,
    kept_records,
    train_config,
    train_side,
)

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "data"
RESULTS = ROOT / "bench" / "results" / "loop_experiment"
console = Console(width=170)

# (category, source file under ../shared/data, records kept, override the file's own category)
SUBSETS = [
    ("math", "instruct/gsm8k_train.jsonl", 600, False),
    ("code", "instruct/code_alpaca_2k.json", 300, True),
    ("instructions", "instruct/self_instruct_user_oriented_instructions.jsonl", 120, True),
    ("instructions", "instruct/self_instruct_seed_tasks.jsonl", 80, True),
    ("chat", "conversations/oasst/oasst_en_100_tree.jsonl", 100, True),
    ("tool_use", "conversations/llamafactory_glaive_toolcall_en_demo_sharegpt.json", 80, False),
]
CATEGORIES = sorted({c for c, *_ in SUBSETS})
STATIC_TEMPERATURE = 1000.0


def prepare_data(data: Path) -> list[dict[str, Any]]:
    """Write a seeded random subset of every source file (same format) and return the curate inputs."""
    data.mkdir(parents=True, exist_ok=True)
    inputs = []
    for category, rel, n, override in SUBSETS:
        src = SHARED / rel
        dst = data / src.name
        if not dst.exists():
            if src.suffix == ".jsonl":
                lines = [x for x in src.read_bytes().split(b"\n") if x.strip()]
                picked = sorted(random.Random(0).sample(range(len(lines)), min(n, len(lines))))
                dst.write_bytes(b"\n".join(lines[i] for i in picked) + b"\n")
            else:
                items = json.loads(src.read_text(encoding="utf-8"))
                picked = sorted(random.Random(0).sample(range(len(items)), min(n, len(items))))
                dst.write_text(json.dumps([items[i] for i in picked], ensure_ascii=False), encoding="utf-8")
        inputs.append({"path": str(dst), "category": category, "override_category": override})
    return inputs


def base_config(args: argparse.Namespace, inputs: list[dict[str, Any]]) -> dict[str, Any]:
    """The loop settings every arm shares (only balance, rounds, feedback and train.seed differ)."""
    return {
        "curate": {
            "seed": 0,
            "inputs": inputs,
            "pii": {"enabled": False},
            "split": {"eval_fraction": args.eval_fraction},
            "format": {"seq_len": 512},
            "balance": {"temperature": 1.0, "min_per_category": 8},
        },
        "model": {"builtin": "tiny", "vocab_size": 2048, "hidden_size": 128, "layers": 2, "heads": 4,
                  "pretrain_steps": args.pretrain_steps},
        "train": {"lr": args.lr, "warmup_steps": 5, "max_steps": args.steps, "micro_batch_size": 4,
                  "grad_accum": 1, "lora": {"r": 16, "alpha": 32, "dropout": 0.0}, "seed": 0,
                  "checkpoint_every": args.steps, "eval": {"batch_size": 8}},
        "rounds": 1,
        "token_budget": args.budget,
        "score_max_len": 512,
    }


def arm_config(shared: dict[str, Any], arm: str, seed: int, args: argparse.Namespace) -> LoopConfig:
    """The LoopConfig of one arm and seed."""
    cfg = json.loads(json.dumps(shared))
    cfg["train"]["seed"] = seed
    if arm == "uniform":
        cfg["curate"]["balance"]["weights"] = None
    else:
        # Static balance as temperature flattening (T=1000: shares within 0.2% of equal), not explicit
        # `balance.weights`: explicit weights take precedence over the selection file's category weights
        # in every round, so the feedback could then only move example weights (see BENCHMARKS.md).
        if args.static == "explicit":
            cfg["curate"]["balance"]["weights"] = {c: 1.0 for c in CATEGORIES}
        else:
            cfg["curate"]["balance"]["temperature"] = STATIC_TEMPERATURE
        cfg["rounds"] = args.rounds
        cfg["feedback"] = {"rule": "excess"} | {k: v for k, v in {
            "eta": args.eta, "smoothing": args.smoothing, "floor": args.floor, "reference": args.reference,
            "ifd_max": args.ifd_max, "easy_fraction": args.easy_fraction, "easy_weight": args.easy_weight,
            "min_weight": args.min_weight, "max_weight": args.max_weight,
        }.items() if v is not None}
    return LoopConfig.model_validate(cfg)


def link_shared(loop_dir: Path, work: Path) -> None:
    """Point a loop dir at the one curation and base model (api.loop skips stages whose outputs exist)."""
    loop_dir.mkdir(parents=True, exist_ok=True)
    for name in ("curated", "base"):
        if not (loop_dir / name).exists():
            (loop_dir / name).symlink_to(work / name, target_is_directory=True)


def per_category(eval_json: Path) -> dict[str, float]:
    """Per-category held-out eval loss, plus the macro mean and the token-weighted overall loss."""
    report = json.loads(eval_json.read_text(encoding="utf-8"))
    out = {c: float(v["loss"]) for c, v in sorted(report["per_category"].items()) if v.get("loss") is not None}
    out["macro_mean"] = statistics.fmean(out[c] for c in CATEGORIES)
    out["overall"] = float(report["overall"]["loss"])
    return out


def train_once(cfg: LoopConfig, out: Path, work: Path) -> dict[str, Any]:
    """One pack + train + eval through the loop's own code paths, without scoring the pool for feedback."""
    from trainer.loop import train

    shards = out / "shards"
    pack_cfg = cfg.curate.model_copy(deep=True)
    pack_cfg.format.tokenizer = str(work / "base" / "model")
    pack_cfg.balance.token_budget = cfg.token_budget
    if not (shards / "manifest.json").exists():
        api.pack(pack_cfg, work / "curated", shards, progress=False)
    if not (out / "train" / "eval.json").exists():
        train(train_config(cfg, str(work / "base" / "model"), shards, out / "train"))
    manifest = json.loads((shards / "manifest.json").read_text(encoding="utf-8"))
    return {"rounds": [per_category(out / "train" / "eval.json")], "weights": [manifest["balance"]["weights_used"]],
            "train_tokens": [manifest["splits"]["train"]["tokens"]["total"]]}


def run_variant(args: argparse.Namespace) -> dict[str, Any]:
    """Curate + base once, then every arm for every seed; returns the raw per-run eval losses."""
    work = Path(args.work)
    inputs = prepare_data(work / "data")
    shared = base_config(args, inputs)
    curate_cfg = CurateConfig.model_validate(shared["curate"])
    t0 = time.perf_counter()
    if not (work / "curated" / "report.json").exists():
        api.curate(curate_cfg, work / "curated", workers=1, progress=False)
    pool = train_side(kept_records(work / "curated"), curate_cfg)
    ensure_base_model(ModelSpec.model_validate(shared["model"]), pool, work / "base", 0)
    timings = {"curate_and_base_s": round(time.perf_counter() - t0, 1)}
    runs: dict[str, dict[str, Any]] = {}
    uniform_name = f"uniform_steps{args.steps}_lr{args.lr}_budget{args.budget}"
    static = "explicit" if args.static == "explicit" else f"T{STATIC_TEMPERATURE:g}"
    round0_key = f"steps{args.steps}_lr{args.lr}_budget{args.budget}_{static}"
    for seed in args.seeds:
        for arm in ("uniform", "feedback"):
            t = time.perf_counter()
            cfg = arm_config(shared, arm, seed, args)
            name = uniform_name if arm == "uniform" else f"fb_{args.variant}"
            loop_dir = work / f"seed{seed}" / name
            if arm == "feedback":
                link_shared(loop_dir, work)
                # Round 0 (the static balance) does not depend on the feedback settings: reuse it.
                cache = work / f"seed{seed}" / f"round0_{round0_key}"
                if cache.exists() and not (loop_dir / "round_00").exists():
                    shutil.copytree(cache, loop_dir / "round_00", symlinks=True)
            console.print(f"[bold]seed {seed} {name}[/bold] ...")
            if arm == "uniform":
                runs[f"{arm}/{seed}"] = train_once(cfg, loop_dir, work)
            else:
                if not cache.exists():
                    api.loop(cfg.model_copy(update={"rounds": 1}), loop_dir, workers=1, progress=False)
                    tmp = cache.with_name(cache.name + ".tmp")
                    shutil.rmtree(tmp, ignore_errors=True)
                    shutil.copytree(loop_dir / "round_00", tmp, symlinks=True)
                    tmp.rename(cache)  # atomic: a variant waiting for round 0 never sees half a copy
                report = api.loop(cfg, loop_dir, workers=1, progress=False).report
                runs[f"{arm}/{seed}"] = {
                    "rounds": [per_category(loop_dir / f"round_{r:02d}" / "train" / "eval.json")
                               for r in range(cfg.rounds)],
                    "weights": [r["category_weights"] for r in report["rounds"]],
                    "train_tokens": [r["train_tokens"]["total"] for r in report["rounds"]],
                    "base": per_category(loop_dir / "base_eval.json"),
                }
            timings[f"{arm}/{seed}_s"] = round(time.perf_counter() - t, 1)
    return {"settings": {k: v for k, v in vars(args).items() if k != "work"}, "shared": shared,
            "runs": runs, "timings": timings}


def arms(result: dict[str, Any]) -> dict[str, list[dict[str, float]]]:
    """Per arm, one eval-loss dict per seed: (a) final feedback round, (b) uniform, (c) round 0 of (a)."""
    seeds = result["settings"]["seeds"]
    out: dict[str, list[dict[str, float]]] = {"a_feedback": [], "b_uniform": [], "c_static": []}
    final = min(len(result["runs"][f"feedback/{s}"]["rounds"]) for s in seeds) - 1  # same round for every seed
    for s in seeds:
        fb = result["runs"][f"feedback/{s}"]["rounds"]
        out["a_feedback"].append(fb[final])
        out["b_uniform"].append(result["runs"][f"uniform/{s}"]["rounds"][0])
        out["c_static"].append(fb[0])
    return out


def _stat(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.4f} ± {sd:.4f}"


def print_tables(result: dict[str, Any]) -> None:
    """Per category: mean ± std over seeds for each arm, and paired differences (a)-(b), (a)-(c)."""
    by_arm = arms(result)
    base = result["runs"][f"feedback/{result['settings']['seeds'][0]}"]["base"]
    rows = [*CATEGORIES, "macro_mean", "overall", "worst"]
    final_round = min(len(r["rounds"]) for k, r in result["runs"].items() if k.startswith("feedback/")) - 1
    for runs in by_arm.values():
        for r in runs:
            r["worst"] = max(r[c] for c in CATEGORIES)
    table = Table(title=f"held-out eval loss, variant {result['settings']['variant']}: mean ± std over seeds "
                        f"{result['settings']['seeds']}, (a) = round {final_round}; "
                        "paired = per-seed difference, mean ± std [min, max]")
    for col in ("", "base (no LoRA)", "(a) feedback", "(b) uniform", "(c) static", "(a)-(b) paired", "(a)-(c) paired"):
        table.add_column(col, justify="left" if not col else "right")
    for row in rows:
        cells = [f"{base[row]:.4f}" if row in base else ""]
        cells += [_stat([r[row] for r in by_arm[arm]]) for arm in ("a_feedback", "b_uniform", "c_static")]
        for other in ("b_uniform", "c_static"):
            d = [a[row] - o[row] for a, o in zip(by_arm["a_feedback"], by_arm[other], strict=True)]
            cells.append(f"{_stat(d)} [{min(d):+.4f}, {max(d):+.4f}]")
        table.add_row(row, *cells)
    console.print(table)
    weights = Table(title="category share of the training tokens per round (seed "
                          f"{result['settings']['seeds'][0]}; weights asked for in brackets)")
    weights.add_column("round")
    for c in CATEGORIES:
        weights.add_column(c, justify="right")
    for arm, rounds in (("feedback", None), ("uniform", "uniform (b)")):
        run = result["runs"][f"{arm}/{result['settings']['seeds'][0]}"]
        for i, w in enumerate(run["weights"]):
            got = run.get("category_tokens", [{}] * len(run["weights"]))[i]
            total = sum(got.values()) or 1
            weights.add_row(rounds or str(i), *[
                (f"{got[c] / total:.3f} " if got else "") + f"[{w.get(c, 0):.3f}]" for c in CATEGORIES])
    console.print(weights)
    console.print(f"timings (s): {result['timings']}")


def main() -> None:
    """Parse arguments, run the variant, merge it into the raw results file and print its tables."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--variant", default="base_ref", help="Name of the feedback settings tried.")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=40, help="LoRA optimizer steps per round.")
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--budget", type=int, default=80_000, help="Training tokens per round.")
    p.add_argument("--pretrain-steps", type=int, default=300)
    p.add_argument("--eval-fraction", type=float, default=0.2)
    p.add_argument("--static", choices=["temperature", "explicit"], default="temperature",
                   help="How (c) is balanced; 'explicit' equal balance.weights shadow the feedback's category weights.")
    p.add_argument("--eta", type=float)
    p.add_argument("--smoothing", type=float)
    p.add_argument("--floor", type=float)
    p.add_argument("--reference", choices=["base", "previous", "none"])
    p.add_argument("--ifd-max", type=float)
    p.add_argument("--easy-fraction", type=float)
    p.add_argument("--easy-weight", type=float)
    p.add_argument("--min-weight", type=float)
    p.add_argument("--max-weight", type=float)
    p.add_argument("--work", default="/tmp/loop_experiment", help="Working dir (data subsets, loops).")
    p.add_argument("--summarize", action="store_true",
                   help="Only merge the saved parts of --variant (seeds run as separate processes) and print.")
    p.add_argument("--from-disk", action="store_true",
                   help="Collect --variant from its loop dirs (same --steps/--lr/--budget/--rounds) and print.")
    args = p.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    if args.from_disk:
        collect_from_disk(args)
    elif not args.summarize:
        part = run_variant(args)
        seeds = "-".join(str(s) for s in args.seeds)
        (RESULTS / f"{args.variant}__seeds{seeds}.json").write_text(json.dumps(part, indent=1, sort_keys=True))
    print_tables(merge_parts(args.variant, Path(args.work)))


def category_tokens(manifest: Path) -> dict[str, int]:
    """Training tokens per category that a round actually packed (what the weights bought)."""
    after = json.loads(manifest.read_text(encoding="utf-8"))["balance"]["after"]
    return {c: int(v["tokens"]) for c, v in sorted(after.items())}


def collect_from_disk(args: argparse.Namespace) -> dict[str, Any]:
    """A variant's result read from its loop dirs (for runs stopped after their last eval, before the
    final round's pool scoring, which only a further round would use); rounds without eval are left out."""
    work = Path(args.work)
    runs: dict[str, Any] = {}
    for seed in args.seeds:
        uni = work / f"seed{seed}" / f"uniform_steps{args.steps}_lr{args.lr}_budget{args.budget}"
        loop_dir = work / f"seed{seed}" / f"fb_{args.variant}"
        rounds = [loop_dir / f"round_{r:02d}" for r in range(args.rounds)]
        rounds = [d for d in rounds if (d / "train" / "eval.json").exists()]
        if not (uni / "train" / "eval.json").exists() or not rounds:
            continue
        runs[f"uniform/{seed}"] = {"rounds": [per_category(uni / "train" / "eval.json")],
                                   "weights": [json.loads((uni / "shards" / "manifest.json").read_text())
                                               ["balance"]["weights_used"]]}
        runs[f"feedback/{seed}"] = {
            "rounds": [per_category(d / "train" / "eval.json") for d in rounds],
            "weights": [json.loads((d / "shards" / "manifest.json").read_text())["balance"]["weights_used"]
                        for d in rounds],
            "base": per_category(loop_dir / "base_eval.json"),
        }
    settings = {k: v for k, v in vars(args).items() if k not in ("work", "summarize", "from_disk")}
    settings["seeds"] = sorted(int(k.split("/")[1]) for k in runs if k.startswith("feedback/"))
    part = {"settings": settings, "shared": {}, "runs": runs, "timings": {}, "collected_from_disk": True}
    (RESULTS / f"{args.variant}__seeds{'-'.join(str(s) for s in settings['seeds'])}.json").write_text(
        json.dumps(part, indent=1, sort_keys=True))
    return part


def merge_parts(variant: str, work: Path) -> dict[str, Any]:
    """One result from the per-process parts of a variant (saved as VARIANT.json); seeds sorted."""
    parts = [json.loads(f.read_text()) for f in sorted(RESULTS.glob(f"{variant}__seeds*.json"))]
    if not parts:
        raise SystemExit(f"no results for variant {variant!r} in {RESULTS}; run it first")
    merged = {"settings": dict(parts[0]["settings"]), "shared": parts[0]["shared"], "runs": {}, "timings": {}}
    for part in parts:
        merged["runs"].update(part["runs"])
        merged["timings"].update(part["timings"])
    merged["settings"]["seeds"] = sorted({s for part in parts for s in part["settings"]["seeds"]})
    merged["settings"].pop("summarize", None)
    s = merged["settings"]
    for key, run in merged["runs"].items():
        arm, seed = key.split("/")
        if arm == "uniform":
            dirs = [work / f"seed{seed}" / f"uniform_steps{s['steps']}_lr{s['lr']}_budget{s['budget']}"]
        else:
            dirs = [work / f"seed{seed}" / f"fb_{variant}" / f"round_{r:02d}" for r in range(len(run["rounds"]))]
        if all((d / "shards" / "manifest.json").exists() for d in dirs):
            run["category_tokens"] = [category_tokens(d / "shards" / "manifest.json") for d in dirs]
    (RESULTS / f"{variant}.json").write_text(json.dumps(merged, indent=1, sort_keys=True))
    return merged


if __name__ == "__main__":
    main()
