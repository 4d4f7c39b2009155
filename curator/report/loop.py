"""The loop report: did the feedback beat the static balance? Loss and generation metrics with their noise.

The page opens with the verdict for the run at hand: round 0 trains on the static balance, so the
final round vs round 0, per category, on the macro mean and on the worst category, with the paired
standard error of each change, is the comparison the feedback has to win. A change counts only
beyond `z` standard errors. Then: eval loss ± SE per round and category, generation metrics, the
held-out (forgetting) set, what the feedback did and when it held still, the weights against the
pools, data changes and the training curves.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from curator.io import write_json, write_text
from curator.report import html as H


def write_loop_report(
    out: Path, rounds: list[dict[str, Any]], base_eval: dict[str, Any], config: dict[str, Any],
    verdict: dict[str, Any],
) -> dict[str, Any]:
    """Write `loop_report.json` and `loop_report.html`; returns the report data."""
    report = {
        "verdict": verdict,
        "base_eval": {k: base_eval.get(k) for k in ("overall", "per_category")}
        | ({"generation": base_eval["generation"]["per_category"]} if "generation" in base_eval else {})
        | ({"heldout": base_eval["heldout"]["overall"]} if "heldout" in base_eval else {}),
        "rounds": [{k: v for k, v in r.items() if k != "train_ids"} for r in rounds],
        "config": config,
    }
    write_json(report, out / "loop_report.json")
    write_text(render(report), out / "loop_report.html")
    return report


def _pm(value: float | None, se: float | None, digits: int = 4) -> str:
    if value is None:
        return ""
    return f"{value:.{digits}f} ± {se:.{digits}f}" if se is not None else f"{value:.{digits}f}"


def verdict_lines(v: dict[str, Any], rounds: int) -> tuple[list[str], bool]:
    """The verdict's sentences and whether the feedback won (worst better, macro not worse, beyond noise)."""
    m, w = v["macro"], v["worst"]
    lines = [
        f"Final round ({rounds - 1}) vs round 0 (static balance), paired on the same eval records, "
        f"a change counts beyond {v['z']:g} standard errors:",
        f"macro mean eval loss {m['before']:.4f} → {m['after']:.4f} ({m['delta']:+.4f} ± {m['se'] or 0:.4f}): "
        f"{m['verdict']}.",
        f"worst category {w['before_category']} {w['before']:.4f} → {w['after_category']} {w['after']:.4f} "
        f"({w['delta']:+.4f} ± {w['se'] or 0:.4f}): {w['verdict']}.",
    ]
    won = w["verdict"] == "better" and m["verdict"] != "worse"
    return lines, won


def render(report: dict[str, Any]) -> str:
    """The loop report as one self-contained HTML page."""
    v = report["verdict"]
    rounds = report["rounds"]
    base = report["base_eval"]
    cats = sorted({c for r in rounds for c in r["eval"]["per_category"]})
    lines, won = verdict_lines(v, len(rounds))
    if len(rounds) == 1:
        status = "One round only: nothing to compare yet."
    elif won:
        status = "The feedback beat the static balance on the worst category without losing on the mean."
    else:
        status = "The feedback did not beat the static balance beyond noise; see the rounds below."
    verdict_rows = [[c, round(d["before"], 4), round(d["after"], 4), _pm(d["delta"], d["se"]), d["n"], d["verdict"]]
                    for c, d in v["per_category"].items()]
    loss_series = {c: [r["eval"]["per_category"].get(c, {}).get("loss", float("nan")) for r in rounds] for c in cats}
    weight_series = {c: [r["category_weights"].get(c, 0.0) for r in rounds] for c in cats}
    curves = {f"round {r['round']}": [p["loss"] for p in r["train_curve"]] for r in rounds}
    columns = ["base model", *[f"round {r['round']}" for r in rounds]]
    evals = [base, *[r["eval"] for r in rounds]]
    sections: list[tuple[str, list[str]]] = [
        ("Verdict", [*[H.paragraph(x) for x in lines], H.paragraph(status, "ok" if won else "bad"),
                     H.table(["category", "round 0", "final", "change ± SE", "records", "verdict"], verdict_rows)]),
        ("Eval loss by round", ["png:" + H.line_chart("Eval loss per category", loss_series, "round", "loss")]),
        ("Eval loss per category (± standard error, records)", [H.table(
            ["category", "records", *columns],
            [[c, (base.get("per_category") or {}).get(c, {}).get("samples", ""),
              *[_pm(e.get("per_category", {}).get(c, {}).get("loss"), e.get("per_category", {}).get(c, {})
                    .get("loss_se")) for e in evals]] for c in cats],
        )]),
        ("Generation metrics per category", _generation_tables(evals, columns, cats)),
        ("Forgetting check (held-out general set, in no training pool)", [H.table(
            ["", *columns], [["answer loss ± SE", *[_pm((e.get("heldout") or {}).get("loss"),
                                                       (e.get("heldout") or {}).get("loss_se")) for e in evals]],
                             ["records", *[(e.get("heldout") or {}).get("samples", "") for e in evals]]],
        )] if any(e.get("heldout") for e in evals) else [H.paragraph("No held-out set configured (`heldout:`).")]),
        ("What the feedback did", [H.table(
            ["round", "rule note", "held still"],
            [[r["round"], r.get("note") or ("static balance" if r["round"] == 0 else ""),
              ", ".join(r.get("held_still") or [])] for r in rounds]), *_detail_tables(rounds)]),
        ("Category weights and pools", ["png:" + H.line_chart("Share of the token budget", weight_series, "round",
                                                               "weight"),
                                        H.table(["category", "pool tokens", *[f"round {r['round']}" for r in rounds]],
                                                [[c, rounds[0].get("pool", {}).get(c, ""),
                                                  *[r["category_weights"].get(c, 0.0) for r in rounds]]
                                                 for c in cats]),
                                        H.paragraph("Epochs over each round's data (above 1: repeated rows): "
                                                    + ", ".join(f"round {r['round']}: {r.get('epochs')}"
                                                                for r in rounds), "note")]),
        ("Data changes", [H.table(
            ["round", "train records", "added", "removed", "removed because", "example weights"],
            [[r["round"], r["train_records"], r["change"].get("added", ""), r["change"].get("removed", ""),
              ", ".join(f"{k}: {n}" for k, n in r["change"].get("removed_by_reason", {}).items()),
              ", ".join(f"{k}: {n}" for k, n in r["example_reasons"].items())] for r in rounds],
        )]),
        ("Training curves", ["png:" + H.line_chart("Training loss", curves, "step", "loss")]),
    ]
    return H.page("Feedback loop report", sections)


def _generation_tables(evals: list[dict[str, Any]], columns: list[str], cats: list[str]) -> list[str]:
    """One table per generation metric: category rows, evaluation columns, mean ± SE (n)."""
    out = []
    for metric, label in (("chrf", "chrF (0-1)"), ("exact_match", "final-number exact match"),
                          ("valid_json", "valid JSON tool call"), ("right_name", "right function name")):
        rows = []
        for c in cats:
            cells = []
            for e in evals:
                g = (e.get("generation") or {}).get(c, {})
                cells.append(f"{_pm(g.get(metric), g.get(metric + '_se'), 3)} (n {g['n']})" if metric in g else "")
            if any(cells):
                rows.append([c, *cells])
        if rows:
            out += [H.paragraph(label), H.table(["category", *columns], rows)]
    return out or [H.paragraph("No generation metrics (`generate_per_category: 0`).")]


def _detail_tables(rounds: list[dict[str, Any]]) -> list[str]:
    """Per round after the first: the numbers behind each category's new weight."""
    out = []
    keys = [("gain", "gain (nats)"), ("gain_se", "± SE"), ("tokens_trained", "tokens"),
            ("marginal_gain_per_1k", "marginal gain / 1k tok"), ("priority", "priority"),
            ("pool_tokens", "pool"), ("asked_tokens", "asked"), ("unmet_tokens", "unmet"),
            ("weight_before", "before"), ("weight_after", "after"), ("held_still", "held still")]
    for r in rounds[1:]:
        detail = r.get("category_detail") or {}
        if not detail or "gain" not in next(iter(detail.values())):
            continue
        out.append(H.paragraph(f"round {r['round']} weights, from rounds 0-{r['round'] - 1}:", "note"))
        out.append(H.table(["category", *[k[1] for k in keys]],
                           [[c, *[d.get(k[0], "") for k in keys]] for c, d in sorted(detail.items())]))
    return out
