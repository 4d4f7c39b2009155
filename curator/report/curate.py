"""The curation report: what came in, what each step did, what was kept, as JSON and as one HTML page.

It holds counts, distributions, record ids and reasons: never record text, so it is safe to share
(quarantine excerpts stay in the owner-only quarantine file).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow.parquet as pq

from curator.engines.local import RunOutput
from curator.engines.plan import ROW_SHIFT, rule_owners
from curator.io import write_json, write_text
from curator.report import html as H

_TEXT_COLUMNS = frozenset(("messages", "context", "tools", "meta"))
LENGTH_BINS = [1, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768, 10**9]


def _annotations(parts: list[Path]) -> pl.DataFrame:
    """Every column of the parts except record text, plus the input index: the report never loads text."""
    frames = []
    for p in parts:
        columns = [c for c in pq.read_schema(p).names if c not in _TEXT_COLUMNS]
        frame = pl.read_parquet(p, columns=columns)
        frames.append(frame.with_columns((pl.col("row") // (1 << ROW_SHIFT)).alias("_input")))
    frames = [f for f in frames if f.height]
    return pl.concat(frames, how="diagonal_relaxed") if frames else pl.DataFrame()


def _length_histogram(frame: pl.DataFrame) -> list[int]:
    """Records per bin of estimated tokens (bins: `LENGTH_BINS`)."""
    if not frame.height:
        return [0] * (len(LENGTH_BINS) - 1)
    counts, _ = np.histogram(frame["n_tokens_est"].fill_null(0).to_numpy(), bins=LENGTH_BINS)
    return [int(c) for c in counts]


def _optional_summaries(run: RunOutput, annotated: pl.DataFrame) -> dict[str, Any]:
    """Summaries that dedup and PII steps provide about their own annotations (when they ran)."""
    out: dict[str, Any] = {}
    if not annotated.height:
        return out
    names = {s.name for s in run.steps}
    if names & {"exact_dedup", "minhash_dedup", "semantic_dedup"}:
        from curator.steps.dedup import dedup_summary

        out["dedup"] = dedup_summary(annotated)
    if "pii" in names:
        from curator.steps.pii import pii_summary

        out["pii"] = pii_summary(annotated)
    return out


def build_report(run: RunOutput, config: dict[str, Any]) -> dict[str, Any]:
    """Everything the report shows, as plain data (this is `report.json`)."""
    acct = run.accounting
    kept = _annotations(run.kept_parts)
    dropped = _annotations(run.dropped_parts)
    owners = rule_owners(run.steps)
    by_step: Counter[str] = Counter()
    for reason, n in acct.dropped.items():
        by_step[owners.get(reason, "?")] += n
    inputs = [spec["path"] for spec in config["inputs"]]
    per_input = []
    for i, path in enumerate(inputs):
        k = kept.filter(pl.col("_input") == i).height if kept.height else 0
        d = dropped.filter(pl.col("_input") == i).height if dropped.height else 0
        per_input.append(
            {"input": path, "read": acct.read.get(path, 0), "kept": k, "dropped": d,
             "quarantined": acct.quarantined.get(path, 0)}
        )

    def counts(frame: pl.DataFrame, col: str) -> dict[str, int]:
        if not frame.height or col not in frame.columns:
            return {}
        vc = frame[col].fill_null("unknown").value_counts(sort=True)
        return {str(k): int(v) for k, v in zip(vc[col].to_list(), vc["count"].to_list(), strict=True)}

    both = pl.concat([kept, dropped], how="diagonal_relaxed") if dropped.height else kept
    report = {
        "accounting": acct.as_dict(),
        "steps": [
            {"step": s.name, "dropped": by_step.get(s.name, 0), "reasons": sorted(r.reason for r in s.rules())}
            for s in run.steps
        ],
        "inputs": per_input,
        "categories": {"all": counts(both, "category"), "kept": counts(kept, "category")},
        "languages": {"all": counts(both, "language"), "kept": counts(kept, "language")},
        "tokens_est": {
            "kept_total": int(kept["n_tokens_est"].sum()) if kept.height else 0,
            "kept_mean": round(float(kept["n_tokens_est"].mean()), 1) if kept.height else 0.0,
            "bins": LENGTH_BINS,
            "kept_histogram": _length_histogram(kept),
            "dropped_histogram": _length_histogram(dropped),
        },
        "config": config,
        **_optional_summaries(run, both),
    }
    return report


def write_report(report: dict[str, Any], out: Path) -> tuple[Path, Path]:
    """Write `report.json` and `report.html` into the run's output dir."""
    json_path, html_path = out / "report.json", out / "report.html"
    write_json(report, json_path)
    write_text(render_html(report), html_path)
    return json_path, html_path


def render_html(report: dict[str, Any]) -> str:
    """The report as one self-contained page with plots, from `report.json`'s data alone."""
    acct = report["accounting"]
    balance = (
        f"read {acct['read']} = kept {acct['kept']} + dropped {acct['dropped']} "
        f"+ quarantined {acct['quarantined']}"
    )
    sections: list[tuple[str, list[str]]] = [
        ("Accounting", [H.paragraph(balance + "  ✓ reconciles", "ok")]),
        ("Inputs", [H.table(["input", "read", "kept", "dropped", "quarantined"],
                            [[r["input"], r["read"], r["kept"], r["dropped"], r["quarantined"]]
                             for r in report["inputs"]])]),
        ("Steps", [H.table(["step", "dropped", "reasons"],
                           [[s["step"], s["dropped"], ", ".join(s["reasons"])] for s in report["steps"]])]),
        ("Drop reasons", [H.table(["reason", "records"], list(acct["dropped_by_reason"].items()))]),
        ("Quarantine", [H.table(["reason (kind)", "records"], list(acct["quarantined_by_reason"].items())),
                        H.paragraph("Quarantine rows with file, line and raw excerpt are in quarantine.parquet "
                                    "(owner-only: excerpts may hold personal data).", "note")]),
    ]
    if "messages" in acct:
        sections.insert(2, ("Chat messages", chat_message_fragments(acct["messages"])))
    figures: list[str] = []
    lengths = report["tokens_est"]
    if acct["kept"]:
        figures.append("png:" + H.binned_histogram(
            "Record length (estimated tokens)", lengths["bins"],
            {"kept": lengths["kept_histogram"], "dropped": lengths["dropped_histogram"]}, "tokens (log scale)",
        ))
        figures.append("png:" + H.bar_chart(
            "Records per category", {"all": report["categories"]["all"], "kept": report["categories"]["kept"]}
        ))
        figures.append("png:" + H.bar_chart("Records per language", {"kept": report["languages"]["kept"]}, top=12))
    sections.append(("Distributions", figures))
    if "dedup" in report:
        sections.append(("Deduplication", _json_fragments(report["dedup"])))
    if "pii" in report:
        sections.append(("Personal data", _json_fragments(report["pii"])))
    return H.page("Curation report", sections)


ROLE_HINT = (
    "No assistant was named, so the default role rule applied: every turn that answers another sender is an "
    "answer, its sender the assistant of that sample. To choose, name the assistant senders on the input "
    "(`inputs: [{path: ..., as: [Alice, U024BE7LH]}]`) or for every chat input (`chats: {assistant: [...]}`), "
    "or pick a rule (`chats: {roles: top_responders, top_responders: 2}`)."
)


def role_hint(messages: dict[str, Any]) -> str | None:
    """How to choose the assistant, when some chat input ran on the default role rule."""
    return ROLE_HINT if any(m.get("role_rule_default") for m in messages["by_input"].values()) else None


def chat_message_fragments(messages: dict[str, Any]) -> list[str]:
    """The message accounting of chat exports: read = in a sample + in context only + dropped by reason."""
    reasons = sorted({r for m in messages["by_input"].values() for r in m["dropped"]})
    rows = []
    for path, m in messages["by_input"].items():
        rows.append([path, m["read"], m["in_sample"], m["context_only"], sum(m["dropped"].values()),
                     m["chats"], m["sessions"], m["samples"], m["role_rule"] + (" (default)" if m["role_rule_default"]
                                                                                  else "")])
    frags = [
        H.paragraph(
            f"messages read {messages['read']} = in a sample's turns {messages['in_sample']} + in context only "
            f"{messages['context_only']} + dropped {sum(messages['dropped'].values())}  ✓ reconciles", "ok"
        ),
        H.table(["input", "read", "in sample", "context only", "dropped", "chats", "sessions", "samples",
                 "role rule"], rows),
        H.table(["dropped message reason", *messages["by_input"]],
                [[r, *(m["dropped"].get(r, 0) for m in messages["by_input"].values())] for r in reasons]),
    ]
    hint = role_hint(messages)
    if hint:
        frags.append(H.paragraph(hint, "note"))
    if any(m.get("chats_without_assistant") for m in messages["by_input"].values()):
        frags.append(H.paragraph("Some chats have no message from a named assistant sender, so they gave no "
                                 "sample: check the names in `as:` (display names, handles or ids).", "note"))
    return frags


def _json_fragments(data: dict[str, Any]) -> list[str]:
    """Render a step summary: flat mappings as tables, lists of rows as tables, the rest as key/value."""
    frags: list[str] = []
    scalars = [[k, v] for k, v in data.items() if isinstance(v, int | float | str)]
    if scalars:
        frags.append(H.table(["", ""], scalars))
    for key, value in data.items():
        if isinstance(value, dict) and value and all(isinstance(v, int | float) for v in value.values()):
            frags.append(H.paragraph(key.replace("_", " ")))
            frags.append(H.table([key, "count"], list(value.items())))
        elif isinstance(value, list) and value and isinstance(value[0], dict):
            headers = list(value[0].keys())
            frags.append(H.paragraph(key.replace("_", " ")))
            frags.append(H.table(headers, [[_cell(row.get(h)) for h in headers] for row in value[:20]]))
    return frags


def _cell(value: Any) -> Any:
    if isinstance(value, list | dict):
        return ", ".join(map(str, value)) if isinstance(value, list) else str(value)
    return value if value is not None else ""
