"""Turn one round's evaluation into the next round's selection: category weights and example weights.

Category weights (DoReMi-style multiplicative update, Xie et al. 2023). For each category c the
*excess loss* is the share of its loss that training has not removed yet, relative to a reference:
    rel(c)    = L_round(c) / L_ref(c)        (L_ref: the base model's eval loss by default)
    excess(c) = rel(c) - mean_c rel(c)        (token-weighted mean over categories)
    w'(c)     = w(c) * exp(eta * excess(c) / std_c rel)
then normalised, mixed with uniform (`smoothing`) and floored (`floor`) so no category vanishes.
Dividing by the reference removes each category's intrinsic difficulty (math text is more
predictable than poetry), so weight moves to where this round's data helped least. With
`reference: none` (L_ref = 1) the update follows the absolute loss, as Group DRO does: weight moves
to the worst category.

Example weights (Cherry / Superfiltering, Li et al. 2023-24), per training record from the pool
scores: IFD = loss(answer | prompt) / loss(answer). IFD >= `ifd_max` means the prompt does not
help predict the answer (misaligned or noisy pair): weight 0, excluded. The `easy_fraction` of
records with the lowest loss(answer | prompt) within their category are already known: weight
`easy_weight`. The rest get weight IFD / median IFD clipped to [0.5, 2]: hard but learnable
examples are preferred by the balancing step's weighted sampling.

The output is a selection file (`schemas/selection.schema.json`) that `balance.weights_file` reads.
"""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path
from typing import Any

import polars as pl
from pydantic import BaseModel, ConfigDict, Field

from curator.io import write_json
from curator.record import schema_errors

SELECTION_VERSION = 1


class FeedbackConfig(BaseModel):
    """How strongly evaluation moves the next round's data."""

    model_config = ConfigDict(extra="forbid")

    eta: float = Field(1.0, ge=0, description="Step size of the multiplicative category update.")
    smoothing: float = Field(0.1, ge=0, le=1, description="Mix of uniform weights into the update.")
    floor: float = Field(0.05, ge=0, lt=1, description="Minimum share of any category.")
    reference: str = Field(
        "base", pattern="^(base|previous|none)$",
        description="L_ref: the base model, the previous round, or none (absolute loss: Group-DRO-like).",
    )
    ifd_max: float = Field(1.0, gt=0, description="Exclude examples whose IFD is at least this.")
    easy_fraction: float = Field(0.1, ge=0, lt=1, description="Lowest-loss share of each category treated as known.")
    easy_weight: float = Field(0.25, ge=0, description="Weight of known examples (0 excludes them).")
    min_weight: float = Field(0.5, gt=0, description="Lower clip of IFD-derived weights.")
    max_weight: float = Field(2.0, gt=0, description="Upper clip of IFD-derived weights.")


def apply_floor(weights: dict[str, float], floor: float) -> dict[str, float]:
    """Normalise to 1 with every share at least `floor`: floored shares are fixed, the rest rescaled."""
    floor = min(floor, 1 / len(weights)) if weights else floor
    fixed: set[str] = set()
    while True:
        free = 1.0 - floor * len(fixed)
        rest = {c: v for c, v in weights.items() if c not in fixed}
        total = sum(rest.values()) or 1.0
        scaled = {c: v / total * free for c, v in rest.items()}
        low = {c for c, v in scaled.items() if v < floor}
        if not low:
            return {c: floor if c in fixed else scaled[c] for c in weights}
        fixed |= low


def category_update(
    weights: dict[str, float],
    loss: dict[str, float],
    ref_loss: dict[str, float],
    tokens: dict[str, int],
    cfg: FeedbackConfig,
) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """New category weights from this round's and the reference's per-category eval loss.

    Categories without an eval loss keep their (renormalised) weight. Returns the weights and, per
    category, the numbers that produced them (for the loop report).
    """
    cats = sorted(weights)
    measured = [c for c in cats if c in loss and c in ref_loss and ref_loss[c] > 0]
    rel = {c: loss[c] / ref_loss[c] for c in measured}
    total_tokens = sum(tokens.get(c, 1) for c in measured) or 1
    mean = sum(rel[c] * tokens.get(c, 1) for c in measured) / total_tokens if measured else 0.0
    spread = math.sqrt(sum((rel[c] - mean) ** 2 for c in measured) / len(measured)) if len(measured) > 1 else 0.0
    scale = spread if spread > 1e-9 else 1.0
    raw = {c: weights[c] * math.exp(cfg.eta * (rel[c] - mean) / scale) if c in rel else weights[c] for c in cats}
    norm = sum(raw.values()) or 1.0
    mixed = {c: (1 - cfg.smoothing) * raw[c] / norm + cfg.smoothing / len(cats) for c in cats}
    new = {c: round(v, 6) for c, v in apply_floor(mixed, cfg.floor).items()}
    detail = {
        c: {
            "weight_before": round(weights[c], 6),
            "weight_after": new[c],
            "eval_loss": round(loss[c], 6) if c in loss else None,
            "ref_loss": round(ref_loss[c], 6) if c in ref_loss else None,
            "relative_loss": round(rel[c], 6) if c in rel else None,
            "excess": round(rel[c] - mean, 6) if c in rel else None,
        }
        for c in cats
    }
    return new, detail


def example_weights(scores: pl.DataFrame, cfg: FeedbackConfig) -> tuple[dict[str, float], dict[str, str]]:
    """Per-record weights from pool scores (`id`, `category`, `loss_cond`, `ifd`), with the reason.

    Records that could not be scored (no answer tokens, too long) keep weight 1 and reason `unscored`.
    """
    frame = scores.with_columns(pl.col("category").fill_null("uncategorized"))
    scored = frame.filter(pl.col("ifd").is_not_null() & pl.col("loss_cond").is_not_null())
    median_ifd = scored.filter(pl.col("ifd") < cfg.ifd_max)["ifd"].median() or 1.0
    easy_cut = scored.group_by("category").agg(
        pl.col("loss_cond").quantile(cfg.easy_fraction, interpolation="lower").alias("_cut")
    )
    scored = scored.join(easy_cut, on="category", how="left")
    weights: dict[str, float] = {}
    reasons: dict[str, str] = {}
    for rid, ifd, loss, cut in scored.select("id", "ifd", "loss_cond", "_cut").iter_rows():
        if ifd >= cfg.ifd_max:
            weights[rid], reasons[rid] = 0.0, "ifd_noise"
        elif cfg.easy_fraction > 0 and loss <= cut:
            weights[rid], reasons[rid] = cfg.easy_weight, "already_known"
        else:
            w = min(max(ifd / median_ifd, cfg.min_weight), cfg.max_weight)
            weights[rid], reasons[rid] = round(w, 6), "ifd_weighted"
    for rid in frame.filter(~pl.col("id").is_in(scored["id"].implode()))["id"].to_list():
        weights[rid], reasons[rid] = 1.0, "unscored"
    return dict(sorted(weights.items())), reasons


def build_selection(
    *,
    round_index: int,
    weights: dict[str, float],
    loss: dict[str, float],
    ref_loss: dict[str, float],
    tokens: dict[str, int],
    scores: pl.DataFrame,
    cfg: FeedbackConfig,
) -> dict[str, Any]:
    """The next round's selection document (validated against `schemas/selection.schema.json`)."""
    cat_weights, detail = category_update(weights, loss, ref_loss, tokens, cfg)
    ex_weights, reasons = example_weights(scores, cfg)
    selection = {
        "selection_version": SELECTION_VERSION,
        "round": round_index + 1,
        "derived_from_round": round_index,
        "category_weights": cat_weights,
        "example_weights": ex_weights,
        "category_detail": detail,
        "example_reasons": dict(Counter(reasons.values()).most_common()),
        "feedback": cfg.model_dump(),
    }
    problems = schema_errors(selection, "selection.schema.json")
    if problems:
        raise ValueError("selection does not match schemas/selection.schema.json: " + "; ".join(problems[:5]))
    return selection


def write_selection(selection: dict[str, Any], path: Path) -> Path:
    """Write a selection file atomically."""
    write_json(selection, path)
    return path
