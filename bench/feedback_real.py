"""Does the feedback beat static balancing on a real model? (issue 12, part 3)

At the same training-token budget per round (the balancer fills it to within one record), the same
pretrained base (the packaged SmolLM2-135M-Instruct, `trainer/pretrained.py`) and the same held-out
eval split, for every seed in `--seeds` (the trainer's seed: LoRA init and batch order), three arms:
  uniform   balance.temperature 1, no weights: records sampled up to the budget whatever their
            category (the natural, skewed mix); one round of `api.loop`;
  static    temperature-flattened balance (T = 1000: equal shares), i.e. round 0 of the feedback arm;
  feedback  `api.loop` for `--rounds` rounds from that round 0 with the feedback rule `--rule`; the
            final round is reported. Its loop dir is `feedback` (rule marginal) or `feedback-RULE`;
            a finished round 0 in `feedback` is copied, not retrained (no rule has acted on it yet).
Data: seeded subsets of real files from ../shared/data (see SUBSETS), written to the work dir,
never into the repository. Curated once, shared by every arm through symlinks, and so is the base
model's evaluation (the eval split does not depend on the balance). Every arm is an `api.loop`
directory, so a killed run resumes where it stopped, and raising `--rounds` extends it;
`--summarize` prints the table from disk.

    SFT_CURATOR_CACHE=DIR .venv/bin/python bench/feedback_real.py --prepare   # curate + base eval, once
    nice -n 10 .venv/bin/python bench/feedback_real.py --seeds 0 1 2 --rounds 2 --rule worst
    .venv/bin/python bench/feedback_real.py --seeds 0 1 2 --rounds 2 --rule worst --summarize
Raw results: bench/results/feedback_real.json.
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

from curator import api
from curator.config import CurateConfig
from curator.select import loop as rounds
from curator.select.loop import LoopConfig, compare

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "data"
RESULTS = ROOT / "bench" / "results"
# (category, source file under ../shared/data, records kept, override the file's own category)
SUBSETS = [
    ("math", "instruct/gsm8k_train.jsonl", 110, False),
    ("instructions", "instruct/self_instruct_user_oriented_instructions.jsonl", 110, True),
    ("chat", "conversations/oasst/oasst_en_100_tree.jsonl", 100, True),  # every tree the file has
    ("tool_use", "conversations/llamafactory_glaive_toolcall_en_demo_sharegpt.json", 110, False),
]
CATEGORIES = sorted({c for c, *_ in SUBSETS})


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


def shared_config(args: argparse.Namespace, inputs: list[dict[str, Any]]) -> dict[str, Any]:
    """The loop settings every arm shares (only balance, rounds and train.seed differ)."""
    return {
        "curate": {
            "seed": 0, "inputs": inputs, "pii": {"enabled": False},
            "split": {"eval_fraction": args.eval_fraction},
            "format": {"seq_len": args.seq_len},
            "balance": {"temperature": 1.0, "min_per_category": 2},
        },
        "model": {"path": args.model},
        "train": {"lr": args.lr, "warmup_steps": 2, "micro_batch_size": 1, "grad_accum": 1, "epochs": 1.0,
                  "lora": {"r": 16, "alpha": 32, "dropout": 0.0}, "seed": 0, "cpu_threads": args.threads,
                  "probe_memory": False, "eval": {"batch_size": 2, "max_new_tokens": 48}},
        "rounds": 1,
        "token_budget": args.budget,
        "generate_per_category": args.generate,
        "feedback": {"rule": args.rule, "examples": "none", "floor": 0.1, "focus": args.focus,
                     "max_change": args.max_change, "noise_z": args.noise_z},
    }


def arm_config(shared: dict[str, Any], arm: str, seed: int, rounds: int) -> LoopConfig:
    """The LoopConfig of one arm and seed."""
    cfg = json.loads(json.dumps(shared))
    cfg["train"]["seed"] = seed
    if arm == "feedback":
        cfg["curate"]["balance"]["temperature"] = 1000.0
        cfg["rounds"] = rounds
    else:  # one round: no rule acts, so one uniform dir serves every --rule
        cfg["feedback"]["rule"] = "marginal"
    return LoopConfig.model_validate(cfg)


def link_shared(loop_dir: Path, work: Path) -> None:
    """Point a loop dir at the one curation and the base model's evaluation (api.loop skips what exists)."""
    loop_dir.mkdir(parents=True, exist_ok=True)
    if not (loop_dir / "curated").exists():
        (loop_dir / "curated").symlink_to(work / "curated", target_is_directory=True)
    base = work / "base_eval.json"
    if base.exists() and not (loop_dir / "base_eval.json").exists():
        shutil.copyfile(base, loop_dir / "base_eval.json")


def feedback_dir(rule: str) -> str:
    """The loop dir name of the feedback arm under one rule ("feedback" for the default rule)."""
    return "feedback" if rule == "marginal" else f"feedback-{rule}"


def reuse_round0(loop_dir: Path, other: Path) -> None:
    """Copy another rule's finished round 0 (the static balance: no rule has acted yet) instead of retraining it."""
    src, dst = rounds.round_dir(other, 0), rounds.round_dir(loop_dir, 0)
    if other != loop_dir and not dst.exists() and (src / "train" / "eval.json").exists():
        shutil.copytree(src, dst, symlinks=True)


def run(args: argparse.Namespace) -> None:
    """Curate once, then every arm of every seed in --seeds; each arm is a resumable loop directory."""
    work = Path(args.work)
    shared = shared_config(args, prepare_data(work / "data"))
    if not (work / "curated" / "report.json").exists():
        api.curate(CurateConfig.model_validate(shared["curate"]), work / "curated", workers=1, progress=False)
    if not (work / "base_eval.json").exists():  # once, before the seeds run in parallel
        cfg = arm_config(shared, "feedback", args.seeds[0], args.rounds)
        shards = work / "base_shards"  # only its eval split is read: the same in every arm and round
        if not (shards / "manifest.json").exists():
            api.pack(rounds.round_pack_config(cfg, 0, args.model, work), work / "curated", shards, progress=False)
        t0 = time.perf_counter()
        api.evaluate(rounds.train_config(cfg, args.model, shards, work / "unused"), adapter="none",
                     out=work / "base_eval.json")
        (work / "base_eval.time").write_text(f"{time.perf_counter() - t0:.1f}\n")
    if args.prepare:
        return
    for seed in args.seeds:
        for arm in ("feedback", "uniform"):
            loop_dir = work / f"seed{seed}" / (feedback_dir(args.rule) if arm == "feedback" else arm)
            link_shared(loop_dir, work)
            if arm == "feedback":
                reuse_round0(loop_dir, work / f"seed{seed}" / feedback_dir("marginal"))
            t0 = time.perf_counter()
            api.loop(arm_config(shared, arm, seed, args.rounds), loop_dir, workers=1, progress=False)
            timing = work / f"seed{seed}" / f"{loop_dir.name}.r{args.rounds if arm == 'feedback' else 1}.time"
            if not timing.exists():
                timing.write_text(f"{time.perf_counter() - t0:.1f}\n")


def _eval(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))


def _losses(ev: dict[str, Any]) -> dict[str, float]:
    out = {c: float(ev["per_category"][c]["loss"]) for c in CATEGORIES}
    out["macro_mean"] = statistics.fmean(out[c] for c in CATEGORIES)
    out["worst"] = max(out[c] for c in CATEGORIES)
    return out


def predicted_vs_measured(fb: Path, n_rounds: int, evals: list[dict[str, Any]]) -> dict[str, Any]:
    """Per round after 0 and category: the loss change the rule's curve predicted (rule worst) and the measured one."""
    out: dict[str, Any] = {}
    for r in range(1, n_rounds):
        detail = json.loads((fb / f"round_{r:02d}" / "selection.json").read_text())["category_detail"]
        out[str(r)] = {c: {"predicted": d["predicted_loss_after"] - d["predicted_loss_before"]
                           if d.get("predicted_loss_after") is not None else None,
                           "measured": evals[r]["per_category"][c]["loss"] - evals[r - 1]["per_category"][c]["loss"],
                           "tokens_before": d.get("tokens_trained"), "exponent": d.get("exponent")}
                       for c, d in detail.items() if c in evals[r]["per_category"]}
    return out


def summarize(args: argparse.Namespace) -> dict[str, Any]:
    """Per arm and seed the eval losses; paired differences feedback - static and feedback - uniform."""
    work = Path(args.work)
    runs: dict[str, Any] = {}
    for seed in args.seeds:
        fb = work / f"seed{seed}" / feedback_dir(args.rule)
        uni = work / f"seed{seed}" / "uniform" / "round_00" / "train" / "eval.json"
        rounds = [fb / f"round_{r:02d}" / "train" / "eval.json" for r in range(args.rounds)]
        if not uni.exists() or not all(p.exists() for p in rounds):
            continue
        evals = [_eval(p) for p in rounds]
        manifests = {"uniform": _eval(uni.parent.parent / "shards" / "manifest.json"),
                     "static": _eval(fb / "round_00" / "shards" / "manifest.json"),
                     "feedback": _eval(fb / f"round_{args.rounds - 1:02d}" / "shards" / "manifest.json")}
        runs[str(seed)] = {
            "uniform": _losses(_eval(uni)), "static": _losses(evals[0]), "feedback": _losses(evals[-1]),
            "feedback_rounds": [_losses(e) for e in evals],
            "weights": [json.loads((fb / f"round_{r:02d}" / "round.json").read_text())["category_weights"]
                        for r in range(args.rounds)],
            "notes": [json.loads((fb / f"round_{r:02d}" / "round.json").read_text()).get("note")
                      for r in range(args.rounds)],
            "paired_final_vs_round0": compare(evals[0], evals[-1], args.noise_z),
            "predicted_vs_measured": predicted_vs_measured(fb, args.rounds, evals),
            "uniform_weights": json.loads((work / f"seed{seed}" / "uniform" / "round_00" / "round.json")
                                          .read_text())["category_weights"],
            "train": {a: {"rows": m["splits"]["train"]["rows"],
                          "tokens": m["splits"]["train"]["tokens"]["total"] - m["splits"]["train"]["tokens"]["padding"],
                          "per_category": {c: v["tokens"] for c, v in m["balance"]["after"].items()}}
                      for a, m in manifests.items()},
            "times_s": {t.stem: float(t.read_text()) for t in sorted((work / f"seed{seed}").glob("*.time"))},
        }
    base = _losses(_eval(work / "base_eval.json")) if (work / "base_eval.json").exists() else {}
    result = {"settings": {k: v for k, v in vars(args).items() if k not in ("summarize", "prepare")}, "base": base,
              "runs": runs, "load_average": os.getloadavg()}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "feedback_real.json").write_text(json.dumps(result, indent=1, sort_keys=True) + "\n")
    print_table(result)
    return result


def _stat(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.4f} ± {sd:.4f}"


def _pm(v: dict[str, Any]) -> str:
    se = v["se"] if v["se"] is not None else float("nan")
    return f"{v['delta']:+.4f} ± {se:.4f} ({v['verdict']})"


def print_table(result: dict[str, Any]) -> None:
    """Markdown: mean ± std over seeds per arm, and paired (feedback - other) with [min, max]."""
    runs = list(result["runs"].values())
    if not runs:
        print("no finished seeds yet")
        return
    rows = [*CATEGORIES, "macro_mean", "worst"]
    print(f"seeds: {sorted(result['runs'])}")
    print("| | base | uniform | static (round 0) | feedback (final) | feedback - static | feedback - uniform |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        cells = [f"{result['base'].get(row, float('nan')):.4f}"]
        cells += [_stat([r[a][row] for r in runs]) for a in ("uniform", "static", "feedback")]
        for other in ("static", "uniform"):
            d = [r["feedback"][row] - r[other][row] for r in runs]
            cells.append(f"{_stat(d)} [{min(d):+.4f}, {max(d):+.4f}]")
        print(f"| {row} | " + " | ".join(cells) + " |")
    for seed, r in sorted(result["runs"].items()):
        print(f"seed {seed} weights per round: {r['weights']}; notes: {r['notes']}; times: {r['times_s']}")
        print(f"seed {seed} trained (rows, tokens): " + ", ".join(f"{a} {t['rows']}, {t['tokens']} {t['per_category']}"
                                                             for a, t in r["train"].items()))
        pv = r["paired_final_vs_round0"]
        parts = [f"{c} {_pm(v)}" for c, v in pv["per_category"].items()]
        parts += [f"macro {_pm(pv['macro'])}", f"worst {_pm(pv['worst'])}"]
        print(f"seed {seed} paired final - round 0: " + ", ".join(parts))
        for r_idx, cats in r["predicted_vs_measured"].items():
            if all(v["predicted"] is not None for v in cats.values()):
                print(f"seed {seed} round {r_idx} predicted -> measured change: " + ", ".join(
                    f"{c} {v['predicted']:+.4f} -> {v['measured']:+.4f}"
                    for c, v in cats.items()))


def main() -> None:
    """Parse arguments; run the seeds given, or summarize what is on disk."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default=None,
                   help="Local dir of the pretrained base model; default: the packaged SmolLM2-135M-Instruct "
                   "(trainer/pretrained.py, converted once into $SFT_CURATOR_CACHE).")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--budget", type=int, default=8192, help="Training tokens per round.")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--eval-fraction", type=float, default=0.3)
    p.add_argument("--generate", type=int, default=0, help="Eval records per category to generate for.")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rule", default="marginal", choices=["marginal", "worst", "excess"])
    p.add_argument("--focus", type=float, default=1.0)
    p.add_argument("--max-change", type=float, default=2.0)
    p.add_argument("--noise-z", type=float, default=2.0)
    p.add_argument("--work", default="/tmp/feedback_real3")
    p.add_argument("--summarize", action="store_true")
    p.add_argument("--prepare", action="store_true", help="Only curate and evaluate the base model (run once first).")
    args = p.parse_args()
    if args.model is None:
        from trainer.pretrained import packaged_model_dir

        args.model = str(packaged_model_dir())
    if args.summarize:
        summarize(args)
    else:
        run(args)


if __name__ == "__main__":
    main()
