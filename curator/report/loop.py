"""The loop report: did the feedback help? Eval loss by round and category, weights, data changes, curves.

The first thing on the page is the verdict: worst-category and mean eval loss of the first and the
last round, so a reader sees in ten seconds whether the loop helped.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from curator.io import write_json, write_text
from curator.report import html as H


def verdict(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Worst-category and overall eval loss, first round vs last, and whether each improved."""
    first, last = rounds[0]["eval"], rounds[-1]["eval"]
    cats = sorted(set(first["per_category"]) & set(last["per_category"]))

    def worst(ev: dict[str, Any]) -> tuple[str, float]:
        loss = {c: ev["per_category"][c]["loss"] for c in cats}
        name = max(loss, key=lambda c: loss[c]) if loss else ""
        return name, loss.get(name, float("nan"))

    w_first, w_last = worst(first), worst(last)
    return {
        "rounds": len(rounds),
        "overall_first": first["overall"]["loss"],
        "overall_last": last["overall"]["loss"],
        "worst_first": {"category": w_first[0], "loss": w_first[1]},
        "worst_last": {"category": w_last[0], "loss": w_last[1]},
        "overall_improved": last["overall"]["loss"] < first["overall"]["loss"],
        "worst_improved": w_last[1] < w_first[1],
    }


def write_loop_report(
    out: Path, rounds: list[dict[str, Any]], base_eval: dict[str, Any], config: dict[str, Any]
) -> dict[str, Any]:
    """Write `loop_report.json` and `loop_report.html`; returns the report data."""
    report = {
        "verdict": verdict(rounds),
        "base_eval": {"overall": base_eval.get("overall"), "per_category": base_eval.get("per_category")},
        "rounds": [{k: v for k, v in r.items() if k != "train_ids"} for r in rounds],
        "config": config,
    }
    write_json(report, out / "loop_report.json")
    write_text(render(report), out / "loop_report.html")
    return report


def render(report: dict[str, Any]) -> str:
    """The loop report as one self-contained HTML page."""
    v = report["verdict"]
    rounds = report["rounds"]
    cats = sorted({c for r in rounds for c in r["eval"]["per_category"]})
    helped = v["worst_improved"] and v["overall_improved"]
    line = (
        f"Over {v['rounds']} rounds: mean eval loss {v['overall_first']:.4f} → {v['overall_last']:.4f}; "
        f"worst category {v['worst_first']['category']} {v['worst_first']['loss']:.4f} → "
        f"{v['worst_last']['category']} {v['worst_last']['loss']:.4f}."
    )
    status = "The feedback helped on both." if helped else "The feedback did not improve both; see the rounds below."
    loss_series = {c: [r["eval"]["per_category"].get(c, {}).get("loss", float("nan")) for r in rounds] for c in cats}
    loss_series["overall (mean)"] = [r["eval"]["overall"]["loss"] for r in rounds]
    weight_series = {c: [r["category_weights"].get(c, 0.0) for r in rounds] for c in cats}
    curves = {f"round {r['round']}": [p["loss"] for p in r["train_curve"]] for r in rounds}
    sections: list[tuple[str, list[str]]] = [
        ("Verdict", [H.paragraph(line), H.paragraph(status, "ok" if helped else "bad")]),
        ("Eval loss by round", ["png:" + H.line_chart("Eval loss per category", loss_series, "round", "loss")]),
        ("Eval loss per category", [H.table(
            ["category", "base model", *[f"round {r['round']}" for r in rounds]],
            [[c, _loss(report["base_eval"], c), *[_loss(r["eval"], c) for r in rounds]] for c in cats],
        )]),
        ("Category weights", ["png:" + H.line_chart("Share of the token budget", weight_series, "round", "weight"),
                              H.table(["category", *[f"round {r['round']}" for r in rounds]],
                                      [[c, *[r["category_weights"].get(c, 0.0) for r in rounds]] for c in cats])]),
        ("Data changes", [H.table(
            ["round", "train records", "added", "removed", "removed because", "example weights"],
            [[r["round"], r["train_records"], r["change"].get("added", ""), r["change"].get("removed", ""),
              ", ".join(f"{k}: {n}" for k, n in r["change"].get("removed_by_reason", {}).items()),
              ", ".join(f"{k}: {n}" for k, n in r["example_reasons"].items())] for r in rounds],
        )]),
        ("Training curves", ["png:" + H.line_chart("Training loss", curves, "step", "loss")]),
    ]
    return H.page("Feedback loop report", sections)


def _loss(ev: dict[str, Any] | None, cat: str) -> Any:
    per = (ev or {}).get("per_category") or {}
    value = per.get(cat, {}).get("loss")
    return round(value, 4) if value is not None else ""
