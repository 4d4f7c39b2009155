"""`curator`: one command with subcommands (curate, pack, export, train, eval, loop, demo, schema)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

console = Console(stderr=True)
DEMO_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "demo.yaml"
DEMO_TINY_CONFIG = DEMO_CONFIG.with_name("demo_tiny.yaml")  # `demo --tiny`: same data, a tiny model built here


class UserError(Exception):
    """An error the user can act on: printed as one message, no traceback, exit code 2."""


def _print_curate_summary(report: dict[str, Any], out: Path) -> None:
    acct = report["accounting"]
    table = Table(title="curation summary")
    for col in ("input", "read", "kept", "dropped", "quarantined"):
        table.add_column(col, justify="right" if col != "input" else "left")
    for row in report["inputs"]:
        table.add_row(row["input"], *(str(row[k]) for k in ("read", "kept", "dropped", "quarantined")))
    table.add_row("[bold]total", *(f"[bold]{acct[k]}" for k in ("read", "kept", "dropped", "quarantined")))
    console.print(table)
    for title, counts in (("dropped by reason", acct["dropped_by_reason"]),
                          ("quarantined by reason", acct["quarantined_by_reason"])):
        if counts:
            reasons = Table(title=title)
            reasons.add_column("reason")
            reasons.add_column("records", justify="right")
            for reason, n in counts.items():
                reasons.add_row(reason, str(n))
            console.print(reasons)
    for row in report["inputs"]:
        for note in row.get("notes", []):
            console.print(f"[yellow]{row['input']}:[/yellow] {note}")
    skipped = report.get("skipped_inputs", [])
    if skipped:
        console.print(f"[yellow]skipped {len(skipped)} file(s) of the input directories[/yellow] "
                      "(report.json lists all):")
        for s in skipped[:10]:
            console.print(f"  {s['path']}: {s['reason']}")
        if len(skipped) > 10:
            console.print(f"  ... and {len(skipped) - 10} more")
    if "messages" in acct:
        _print_chat_messages(acct["messages"])
    console.print(
        f"[green]read {acct['read']} = kept {acct['kept']} + dropped {acct['dropped']} + quarantined "
        f"{acct['quarantined']}[/green]  report: {out / 'report.html'}"
    )


def _print_chat_messages(messages: dict[str, Any]) -> None:
    """Chat exports (issue 14): messages read = in a sample + in context only + dropped by reason."""
    from curator.report.curate import role_hint

    table = Table(title="chat messages")
    for col in ("input", "read", "in sample", "context only", "dropped", "samples", "role rule"):
        table.add_column(col, justify="right" if col not in ("input", "role rule") else "left")
    for path, m in messages["by_input"].items():
        dropped = ", ".join(f"{r} {n}" for r, n in sorted(m["dropped"].items(), key=lambda kv: -kv[1]))
        table.add_row(path, str(m["read"]), str(m["in_sample"]), str(m["context_only"]),
                      f"{sum(m['dropped'].values())} ({dropped})" if dropped else "0", str(m["samples"]),
                      m["role_rule"] + (" (default)" if m["role_rule_default"] else ""))
    console.print(table)
    hint = role_hint(messages)
    if hint:
        console.print(f"[yellow]{hint}[/yellow]")


def cmd_curate(args: argparse.Namespace) -> int:
    from curator import api
    from curator.config import load_config

    cfg = load_config(args.config)
    if args.jsonl:
        cfg.write_jsonl = True
    result = api.curate(cfg, args.out, inputs=args.inputs, format=args.format, workers=args.workers,
                        fresh=args.fresh, engine=args.engine, ray_address=args.ray_address)
    if result.retries:  # --engine ray: tasks Ray re-ran after losing a worker
        console.print(f"[yellow]ray retried {sum(result.retries.values())} task(s) after a worker failure:[/yellow] "
                      f"{', '.join(result.retries)}")
    _print_curate_summary(result.report, result.out)
    return 0


def cmd_pack(args: argparse.Namespace) -> int:
    from curator import api
    from curator.format.shards import summary_rows

    result = api.pack(args.config, args.kept, args.out, tokenizer=args.tokenizer, seq_len=args.seq_len,
                      selection=args.selection)
    table = Table(title=f"shards in {result.out}")
    table.add_column("")
    table.add_column("", justify="right")
    for label, value in summary_rows(result.manifest):
        table.add_row(label, value)
    console.print(table)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from curator import api

    result = api.export(args.config, args.kept, args.out, format=args.format)
    summary = result.summary
    table = Table(title=f"{summary['format']} export in {result.out}")
    for col in ("split", "records", "path"):
        table.add_column(col, justify="right" if col == "records" else "left")
    for name, split in summary["splits"].items():
        table.add_row(name, str(split["records"]), split["path"])
    console.print(table)
    skipped = {k: n for k, n in summary["records"]["skipped"].items() if n}
    for label, counts in (("skipped", skipped), ("notes", summary["notes"])):
        if counts:
            console.print(f"{label}: " + ", ".join(f"{k} {n}" for k, n in counts.items()))
    return 0


def _rounds(text: str) -> int:
    """argparse type of --rounds: a whole number >= 1."""
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of rounds (a whole number >= 1)")
    return int(text)


def cmd_loop(args: argparse.Namespace) -> int:
    from curator import api
    from curator.select.loop import load_loop_config

    cfg = load_loop_config(args.config)
    if args.tiny:  # the quick path: the config's loop with a tiny model built here instead of its base model
        cfg.model = cfg.model.model_copy(update={"path": None, "builtin": "tiny"})
    if args.rounds is not None:
        cfg.rounds = args.rounds
    result = api.loop(cfg, args.out, workers=args.workers)
    _print_verdict(result.report, result.out)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from curator import api
    from curator.select.loop import load_loop_config

    config = DEMO_TINY_CONFIG if args.tiny else DEMO_CONFIG
    if not config.exists():
        raise UserError(f"{config}: the demo config is missing; run the demo from a clone of the repository")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the demo's model comes from a wheel or is built here: no fetch
    out = args.out or ("runs/demo_tiny" if args.tiny else "runs/demo")
    cfg = load_loop_config(config)
    if args.rounds is not None:
        cfg.rounds = args.rounds
    result = api.loop(cfg, out, workers=args.workers)
    _print_verdict(result.report, result.out)
    return 0


def _print_verdict(report: dict[str, Any], out: Path) -> None:
    from curator.report.loop import verdict_lines

    table = Table(title="feedback loop: eval loss ± SE per round (share of the budget)")
    rounds = report["rounds"]
    cats = sorted({c for r in rounds for c in r["eval"]["per_category"]})
    table.add_column("category")
    for r in rounds:
        table.add_column(f"round {r['round']}", justify="right")
    for c in [*cats, "overall"]:
        cells = []
        for r in rounds:
            ev = r["eval"]["overall"] if c == "overall" else r["eval"]["per_category"].get(c, {})
            se = f" ± {ev['loss_se']:.3f}" if ev.get("loss_se") is not None else ""
            share = f" ({r['category_weights'].get(c, 0):.2f})" if c != "overall" else ""
            cells.append(f"{ev['loss']:.4f}{se}{share}" if ev.get("loss") is not None else "-")
        table.add_row(c, *cells)
    console.print(table)
    for r in rounds:
        if r.get("note"):
            console.print(f"round {r['round']}: {r['note']}")
    lines, _ = verdict_lines(report["verdict"], len(rounds))
    console.print("\n".join(lines))
    console.print(f"report: {out / 'loop_report.html'}")


def cmd_train(args: argparse.Namespace) -> int:
    from curator import api

    result = api.train(args.config)
    console.print_json(data={k: v for k, v in result.summary.items() if k != "params"})
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from curator import api

    result = api.evaluate(args.config, adapter=args.adapter)
    console.print_json(data={"eval": str(result.path), "overall": result.overall, "per_category": result.per_category})
    return 0


def cmd_schema(args: argparse.Namespace) -> int:
    from curator.config import pipeline_json_schema

    text = json.dumps(pipeline_json_schema(), indent=2, sort_keys=True) + "\n"
    if args.write:
        from curator.io import write_text
        from curator.record import SCHEMA_DIR

        write_text(text, SCHEMA_DIR / "pipeline.schema.json")
    else:
        sys.stdout.write(text)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="curator", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("curate", help="ingest, clean, dedup, scrub; write kept/dropped/quarantine + report")
    p.add_argument("inputs", nargs="*", help="input files or dirs (or list them under `inputs:` in --config)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--config", help="YAML config (see schemas/pipeline.schema.json)")
    p.add_argument("--format", help="reader for every input, instead of auto-detection")
    p.add_argument("--jsonl", action="store_true", help="also write kept.jsonl")
    p.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1), help="processes for map steps")
    p.add_argument("--fresh", action="store_true", help="discard an unfinished run in --out instead of resuming")
    p.add_argument("--engine", choices=("local", "ray"), default="local",
                   help="local: processes on this machine; ray: Ray Data (extra `ray`), same outputs")
    p.add_argument("--ray-address", help="with --engine ray: a running cluster (e.g. auto, ray://host:10001); "
                   "default: start a local Ray with --workers CPUs")
    p.set_defaults(func=cmd_curate)

    p = sub.add_parser("pack", help="balance, split, render with a chat template and pack kept records into shards")
    p.add_argument("kept", help="a `curate` output dir (its kept/ parts) or Parquet file(s) of kept records")
    p.add_argument("--out", required=True, help="shard directory (manifest.json, train/, eval/)")
    p.add_argument("--config", help="YAML config (balance, split, format sections)")
    p.add_argument("--tokenizer", help="local tokenizer or model dir (overrides format.tokenizer)")
    p.add_argument("--seq-len", type=int, help="row length in tokens (overrides format.seq_len)")
    p.add_argument("--selection", help="selection file from the feedback loop (overrides balance.weights_file)")
    p.set_defaults(func=cmd_pack)

    p = sub.add_parser("export", help="write kept records for other trainers: OpenAI chat JSONL, ShareGPT, "
                       "or a Hugging Face dataset dir, split as `pack` splits them")
    p.add_argument("kept", help="a `curate` output dir (its kept/ parts) or Parquet file(s) of kept records")
    p.add_argument("--out", required=True, help="export directory (replaced when it holds an earlier export)")
    p.add_argument("--format", required=True, help="openai (chat fine-tuning JSONL), sharegpt (LLaMA-Factory, "
                   "Axolotl) or hf (datasets save_to_disk, messages column for TRL)")
    p.add_argument("--config", help="YAML config (its split section and seed choose each record's side)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("train", help="train a LoRA adapter on packed shards (YAML: trainer/config.py)")
    p.add_argument("config", help="trainer YAML (model, shards, output_dir, ...)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="evaluate base + adapter on the eval split into eval.json")
    p.add_argument("config", help="trainer YAML")
    p.add_argument("--adapter", help="adapter dir (default: output_dir/adapter; 'none': the base model alone)")
    p.set_defaults(func=cmd_eval)

    workers = min(2, os.cpu_count() or 1)
    p = sub.add_parser("loop", help="curate, then rounds of select -> pack -> train -> eval -> feedback")
    p.add_argument("config", help="loop YAML (curate, model, train, rounds, token_budget, feedback)")
    p.add_argument("--out", required=True, help="loop directory (resumes when it exists)")
    p.add_argument("--workers", type=int, default=workers, help="processes for curation map steps")
    p.add_argument("--tiny", action="store_true", help="quick run: a tiny model built here instead of model.*")
    p.add_argument("--rounds", type=_rounds, help="rounds to run (overrides the config's; more extend a loop dir)")
    p.set_defaults(func=cmd_loop)

    p = sub.add_parser("demo", help="the full loop on sample_data/ with the packaged SmolLM2-135M-Instruct "
                       "(CPU, minutes)")
    p.add_argument("--out", help="loop directory (resumes when it exists; default runs/demo, runs/demo_tiny)")
    p.add_argument("--workers", type=int, default=workers, help="processes for curation map steps")
    p.add_argument("--tiny", action="store_true", help="quick run: a tiny model built here (configs/demo_tiny.yaml)")
    p.add_argument("--rounds", type=_rounds, help="rounds to run (overrides the config's; more extend a loop dir)")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("schema", help="print (or --write) the pipeline config JSON Schema")
    p.add_argument("--write", action="store_true", help="write schemas/pipeline.schema.json")
    p.set_defaults(func=cmd_schema)
    return parser


def _quiet_libraries() -> None:
    """Our rich progress bars replace the libraries' tqdm bars and deprecation chatter on the console."""
    import warnings

    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TQDM_DISABLE", "1")  # read when tqdm is imported: e.g. transformers' GGUF loader bar
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    warnings.filterwarnings("ignore", category=FutureWarning, module="transformers")


def main(argv: list[str] | None = None) -> int:
    """Entry point: parse, run, and turn known errors into one clear line (exit 2)."""
    from curator.config import ConfigError
    from curator.engines.plan import ResumeMismatch
    from curator.format.chat import TokenizerError
    from curator.format.export import ExportError
    from curator.format.shards import ShardError
    from curator.ingest.base import UnreadableInput
    from curator.io import DirBusy
    from curator.steps.balance import SelectionFileError
    from trainer.pretrained import PretrainedModelError

    args = build_parser().parse_args(argv)
    _quiet_libraries()
    try:
        return int(args.func(args) or 0)
    except (UserError, ConfigError, ResumeMismatch, UnreadableInput, ShardError, TokenizerError,
            SelectionFileError, ExportError, PretrainedModelError, DirBusy) as exc:
        console.print(f"[red]error:[/red] {exc}")
        return 2


if __name__ == "__main__":
    sys.exit(main())
