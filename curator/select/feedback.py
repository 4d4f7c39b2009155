"""Turn the evaluations of the rounds so far into the next round's selection: category weights, example weights.

Three category rules (`feedback.rule`):

`marginal` (default): allocate the next budget by measured marginal gain per token. Every round
trains from the same base on a known number of tokens per category t_c, so each round is one point
of each category's learning curve: gain_c = L_base(c) - L_round(c), measured per record on the same
eval records (paired), with its standard error. The curve is a power law, gain_c(t) = a_c * t^beta
(data-mixing-law style, Ye et al. 2024; beta shared by all categories, fitted once the rounds hold
two different token counts of some category, `exponent` until then). The next allocation maximises
sum_c p_c * a_c * t_c^beta under the budget, i.e. t_c ∝ (p_c * a_c)^(1 / (1 - beta)), where the
priority p_c = exp(focus * (L_c - mean L) / mean L) leans toward the categories with the highest
eval loss: near the balanced optimum the macro mean is flat (its first-order change is zero), so
a lean toward the worst category improves it at first order for a second-order cost to the mean.
Then bounds: at least `floor` of the budget, at most `max_change` times (and at least 1/max_change
of) the previous share, and never more tokens than the category's unused pool holds (the balancer
never repeats a record; what a category could not take goes to the others and is reported as
`unmet_tokens`, the tokens that repeating data would have had to supply).
Noise: a category's gain rate a_c (and its loss in p_c) moves the allocation only when it differs
from the mean of the categories by more than `noise_z` standard errors; otherwise it is set to the
mean, and when no category passes, the selection holds still (same weights) and says so.

`worst`: the same learning curves, noise handling and bounds as `marginal`, another objective:
minimise the worst category's predicted eval loss subject to the predicted macro mean not rising.
Each category's curve predicts its loss after t tokens, L_c(t) = L_c + a_c * (t_c^beta - t^beta),
anchored at the loss measured after the t_c tokens it trained on last round (noise-gated losses and
rates, as above). The allocation solves
    min_t max_c L_c(t_c)  s.t.  mean_c L_c(t_c) <= mean_c L_c,  sum_c t_c = budget,  bounds on t_c
with scipy's SLSQP (epigraph form: min s, L_c(t_c) <= s), started from the `marginal` allocation,
then, at that worst loss, for the lowest predicted mean. The mean constraint lets the rule spend
on the worst category what reallocating predicts to gain elsewhere, and no more. `marginal` leans
toward a high loss only through a priority weight and sends the budget to fast learners; a worst
category that learns slowly loses tokens under it (BENCHMARKS.md, "Feedback vs static balancing
on a real model"). When the solver fails, the `marginal` allocation is used and the detail says so.

`excess` (DoReMi-style multiplicative update, Xie et al. 2023): for each category
    rel(c)    = L_round(c) / L_ref(c)        (L_ref: the base model's eval loss by default)
    excess(c) = rel(c) - mean_c rel(c)        (token-weighted mean over categories)
    w'(c)     = w(c) * exp(eta * excess(c) / std_c rel)
then normalised, mixed with uniform (`smoothing`) and floored (`floor`). With `reference: none`
(L_ref = 1) the update follows the absolute loss, as Group DRO does. It uses one round only and
ignores pool sizes; BENCHMARKS.md (issue 7) shows why it did not beat static balancing.

Example weights (Cherry / Superfiltering, Li et al. 2023-24), per training record from the pool
scores: IFD = loss(answer | prompt) / loss(answer). IFD >= `ifd_max` means the prompt does not
help predict the answer (misaligned or noisy pair): weight 0, excluded. The `easy_fraction` of
records with the lowest loss(answer | prompt) within their category are already known: weight
`easy_weight`. The rest get weight IFD / median IFD clipped to [0.5, 2]: hard but learnable
examples are preferred by the balancing step's weighted sampling. `examples: none` skips them.

The output is a selection file (`schemas/selection.schema.json`) that `balance.weights_file` reads.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
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

    rule: str = Field("marginal", pattern="^(marginal|worst|excess)$",
                      description="marginal: gain per token from the learning curves; worst: the worst category's "
                      "predicted loss, the macro mean not rising; excess: DoReMi-style update.")
    exponent: float = Field(0.5, gt=0, lt=1, description="marginal: learning-curve exponent until it can be fitted.")
    focus: float = Field(1.0, ge=0, description="marginal: lean toward high-loss categories (0: macro mean only).")
    max_change: float = Field(2.0, ge=1, description="marginal: largest factor a share may change by per round.")
    noise_z: float = Field(2.0, ge=0, description="marginal: standard errors a difference must exceed to move weight.")
    examples: str = Field("ifd", pattern="^(ifd|none)$", description="Example weights from IFD pool scores, or none.")
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


@dataclass(frozen=True)
class RoundPoint:
    """One round of one category's learning curve: tokens trained, paired gain over the base and its SE."""

    tokens: float
    gain: float
    gain_se: float


@dataclass(frozen=True)
class CategoryState:
    """What the marginal rule knows of a category: its curve so far, its current loss and its unused pool."""

    points: tuple[RoundPoint, ...]
    loss: float
    loss_se: float
    pool_tokens: float


def fit_exponent(states: dict[str, CategoryState], default: float) -> float:
    """The shared learning-curve exponent: least squares over a grid once some category has two token counts."""
    usable = {c: [p for p in s.points if p.tokens > 0] for c, s in states.items()}
    if not any(len({p.tokens for p in pts}) > 1 for pts in usable.values()):
        return default
    best, best_err = default, math.inf
    for beta in [i / 20 for i in range(2, 19)]:
        err = 0.0
        for pts in usable.values():
            if pts:
                a = _rate(pts, beta)[0]
                err += sum(((p.gain - a * p.tokens**beta) / max(p.gain_se, 1e-6)) ** 2 for p in pts)
        if err < best_err - 1e-12:
            best, best_err = beta, err
    return best


def _rate(points: list[RoundPoint], beta: float) -> tuple[float, float]:
    """(a, SE of a) of gain = a * t^beta by least squares through the origin."""
    xs = [p.tokens**beta for p in points]
    sxx = sum(x * x for x in xs)
    a = sum(x * p.gain for x, p in zip(xs, points, strict=True)) / sxx
    se = math.sqrt(sum((x * p.gain_se) ** 2 for x, p in zip(xs, points, strict=True))) / sxx
    return a, se


def _box_allocate(raw: dict[str, float], lo: dict[str, float], hi: dict[str, float], total: float) -> dict[str, float]:
    """Split `total` in proportion to `raw` within per-key bounds [lo, hi] (bounded keys fixed, the rest rescaled)."""
    fixed: dict[str, float] = {}
    while True:
        free = {c: v for c, v in raw.items() if c not in fixed}
        left = total - sum(fixed.values())
        norm = sum(free.values())
        alloc = {c: (left * v / norm if norm > 0 else left / len(free)) for c, v in free.items()} if free else {}
        over = {c for c, v in alloc.items() if v > hi[c] + 1e-9}
        under = {c for c, v in alloc.items() if v < lo[c] - 1e-9}
        if not over and not under:
            return {**fixed, **alloc}
        for c in over:
            fixed[c] = hi[c]
        if not over:
            for c in under:
                fixed[c] = lo[c]
        if len(fixed) == len(raw):
            return fixed


def _predicted_loss(loss: float, rate: float, last_tokens: float, tokens: float, beta: float) -> float:
    """A category's eval loss after `tokens`, from its curve anchored at the loss measured after `last_tokens`."""
    return loss + rate * (max(last_tokens, 0.0) ** beta - max(tokens, 0.0) ** beta)


def _minimax_allocate(
    start: dict[str, float], curve: dict[str, tuple[float, float, float]], beta: float,
    lo: dict[str, float], hi: dict[str, float], total: float,
) -> tuple[dict[str, float], bool]:
    """Tokens per category minimising the worst predicted loss, the predicted mean not above today's.

    `curve[c]` = (loss now, rate, tokens it was measured at). Solved with scipy's SLSQP in the
    epigraph form, in units of the total, then again for the lowest mean at that worst loss (once the
    worst category is at its bound, the others' tokens are otherwise arbitrary); returns (`start`,
    False) when the solver fails.
    """
    import numpy as np
    from scipy.optimize import minimize

    cats = sorted(start)
    n = len(cats)
    scale = total if total > 0 else 1.0
    loss, rate, last = (np.array([curve[c][k] for c in cats]) for k in range(3))
    mean_now = float(loss.mean())

    def predicted(u: np.ndarray) -> np.ndarray:
        return loss + rate * (np.maximum(last, 0.0) ** beta - np.maximum(u * scale, 1e-9) ** beta)

    def d_predicted(u: np.ndarray) -> np.ndarray:  # d L_c / d u_c
        return -rate * beta * scale ** beta * np.maximum(u, 1e-12) ** (beta - 1)

    u0 = np.array([start[c] / scale for c in cats])
    x0 = np.append(u0, float(predicted(u0).max()))
    eye = np.eye(n)
    constraints = [
        {"type": "ineq", "fun": lambda x: x[n] - predicted(x[:n]),
         "jac": lambda x: np.hstack([-eye * d_predicted(x[:n]), np.ones((n, 1))])},
        {"type": "ineq", "fun": lambda x: np.array([mean_now - predicted(x[:n]).mean()]),
         "jac": lambda x: np.append(-d_predicted(x[:n]) / n, 0.0)[None, :]},
        {"type": "eq", "fun": lambda x: np.array([x[:n].sum() - 1.0]),
         "jac": lambda x: np.append(np.ones(n), 0.0)[None, :]},
    ]
    bounds = [(lo[c] / scale, hi[c] / scale) for c in cats] + [(None, None)]
    options = {"maxiter": 200, "ftol": 1e-10}
    res = minimize(lambda x: x[n], x0, jac=lambda x: np.append(np.zeros(n), 1.0), method="SLSQP",
                   bounds=bounds, constraints=constraints, options=options)
    u = res.x[:n] if res.success else None
    if u is not None:  # once the worst is as low as it goes, the others' tokens lower the mean the most
        worst = float(res.x[n]) + 1e-9
        bounds[n] = (worst, worst)
        res = minimize(lambda x: predicted(x[:n]).mean(), res.x, method="SLSQP", bounds=bounds,
                       jac=lambda x: np.append(d_predicted(x[:n]) / n, 0.0), constraints=constraints, options=options)
        u = res.x[:n] if res.success else None
    if u is None or abs(u.sum() - 1.0) > 1e-6 or predicted(u).mean() > mean_now + 1e-6 or \
            any(u[i] < bounds[i][0] - 1e-6 or u[i] > bounds[i][1] + 1e-6 for i in range(n)):
        return start, False
    return {c: float(u[i]) * scale for i, c in enumerate(cats)}, True


def marginal_update(
    weights: dict[str, float], states: dict[str, CategoryState], budget: float, cfg: FeedbackConfig
) -> tuple[dict[str, float], dict[str, dict[str, Any]], list[str]]:
    """New category shares from the categories' learning curves, losses, noise and pools (rules `marginal`, `worst`).

    Returns the shares, per category the numbers that produced them, and the categories whose
    evidence was within noise (all of them: the selection holds still).
    """
    cats = sorted(weights)
    total_w = sum(weights.values()) or 1.0
    prev = {c: weights[c] / total_w for c in cats}
    measured = [c for c in cats if c in states and states[c].points]
    beta = fit_exponent({c: states[c] for c in measured}, cfg.exponent)
    rate = {c: _rate(list(states[c].points), beta) for c in measured}
    mean_rate = sum(rate[c][0] for c in measured) / len(measured) if measured else 0.0
    mean_loss = sum(states[c].loss for c in measured) / len(measured) if measured else 0.0
    noisy: list[str] = []
    eff_rate, eff_loss = {}, {}
    for c in cats:
        if c not in rate:
            noisy.append(c)
            continue
        a, se = rate[c]
        st = states[c]
        rate_ok = abs(a - mean_rate) > cfg.noise_z * se
        loss_ok = abs(st.loss - mean_loss) > cfg.noise_z * st.loss_se
        eff_rate[c] = a if rate_ok else mean_rate
        eff_loss[c] = st.loss if loss_ok else mean_loss
        if not (rate_ok or loss_ok):
            noisy.append(c)
    detail: dict[str, dict[str, Any]] = {}
    if len(noisy) == len(cats) or not measured:
        new = {c: round(prev[c], 6) for c in cats}
        for c in cats:
            detail[c] = {"weight_before": round(prev[c], 6), "weight_after": new[c], "held_still": True}
        return new, detail, cats
    prio = {c: math.exp(cfg.focus * (eff_loss[c] - mean_loss) / mean_loss) if mean_loss > 0 else 1.0 for c in eff_rate}
    # a category without eval records counts as average: no evidence either way
    raw = {c: max(prio.get(c, 1.0) * eff_rate.get(c, mean_rate), 1e-12) ** (1.0 / (1.0 - beta)) for c in cats}
    floor = min(cfg.floor, 1.0 / len(cats))
    pools = {c: states[c].pool_tokens if c in states else math.inf for c in cats}
    lo = {c: budget * max(floor, prev[c] / cfg.max_change) for c in cats}
    hi = {c: max(min(budget * prev[c] * cfg.max_change, pools[c]), 0.0) for c in cats}
    lo = {c: min(lo[c], hi[c]) for c in cats}
    unpooled = {c: budget * prev[c] * cfg.max_change for c in cats}
    wanted = _box_allocate(raw, lo, unpooled, budget)
    alloc = _box_allocate(raw, lo, hi, min(budget, sum(hi.values())))
    solved: bool | None = None
    if cfg.rule == "worst":
        # a category without eval records: average loss and rate, measured at its previous share
        curve = {c: (eff_loss.get(c, mean_loss), eff_rate.get(c, mean_rate),
                     states[c].points[-1].tokens if c in eff_rate else prev[c] * budget) for c in cats}
        wanted, _ = _minimax_allocate(wanted, curve, beta, lo, unpooled, budget)
        alloc, solved = _minimax_allocate(alloc, curve, beta, lo, hi, min(budget, sum(hi.values())))
    total = sum(alloc.values()) or 1.0
    new = {c: round(alloc[c] / total, 6) for c in cats}
    for c in cats:
        st = states.get(c)
        a = rate.get(c)
        detail[c] = {
            "weight_before": round(prev[c], 6),
            "weight_after": new[c],
            "eval_loss": round(st.loss, 6) if st else None,
            "loss_se": round(st.loss_se, 6) if st and math.isfinite(st.loss_se) else None,
            "gain": round(st.points[-1].gain, 6) if st and st.points else None,
            "gain_se": round(st.points[-1].gain_se, 6) if st and st.points and math.isfinite(st.points[-1].gain_se)
            else None,
            "tokens_trained": int(st.points[-1].tokens) if st and st.points else None,
            "gain_rate": round(a[0], 8) if a else None,
            "gain_rate_se": round(a[1], 8) if a and math.isfinite(a[1]) else None,
            "marginal_gain_per_1k": round(1000 * beta * a[0] * max(st.points[-1].tokens, 1) ** (beta - 1), 6)
            if a and st else None,
            "priority": round(prio[c], 6) if c in prio else None,
            "exponent": beta,
            "pool_tokens": int(pools[c]) if math.isfinite(pools[c]) else None,
            "asked_tokens": round(wanted[c]),
            "unmet_tokens": round(max(wanted[c] - alloc[c], 0.0)),
            "capped_by_pool": bool(wanted[c] > pools[c] + 1e-6),
            "held_still": c in noisy,
        }
        if solved is not None:
            used = curve[c]
            detail[c]["predicted_loss_before"] = round(_predicted_loss(*used, used[2], beta), 6)
            detail[c]["predicted_loss_after"] = round(_predicted_loss(*used, alloc[c], beta), 6)
            detail[c]["solver"] = "slsqp" if solved else "failed: marginal allocation"
    return new, detail, noisy


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
    cfg: FeedbackConfig,
    scores: pl.DataFrame | None = None,
    loss: dict[str, float] | None = None,
    ref_loss: dict[str, float] | None = None,
    tokens: dict[str, int] | None = None,
    states: dict[str, CategoryState] | None = None,
    budget: float | None = None,
) -> dict[str, Any]:
    """The next round's selection document (validated against `schemas/selection.schema.json`).

    The `marginal` and `worst` rules read `states` and `budget`; `excess` reads `loss`, `ref_loss` and `tokens`.
    Example weights come from `scores` unless `examples: none` (or no scores).
    """
    held: list[str] = []
    if cfg.rule in ("marginal", "worst"):
        if states is None or budget is None:
            raise ValueError(f"feedback rule '{cfg.rule}' needs the categories' states and the token budget")
        cat_weights, detail, held = marginal_update(weights, states, budget, cfg)
    else:
        cat_weights, detail = category_update(weights, loss or {}, ref_loss or {}, tokens or {}, cfg)
    ex_weights, reasons = example_weights(scores, cfg) if scores is not None and cfg.examples == "ifd" else ({}, {})
    selection: dict[str, Any] = {
        "selection_version": SELECTION_VERSION,
        "round": round_index + 1,
        "derived_from_round": round_index,
        "category_weights": cat_weights,
        "example_weights": ex_weights,
        "category_detail": detail,
        "example_reasons": dict(Counter(reasons.values()).most_common()),
        "feedback": cfg.model_dump(),
    }
    if cfg.rule in ("marginal", "worst"):
        selection["held_still"] = held
        selection["note"] = _note(held, sorted(weights), cfg)
    problems = schema_errors(selection, "selection.schema.json")
    if problems:
        raise ValueError("selection does not match schemas/selection.schema.json: " + "; ".join(problems[:5]))
    return selection


def _note(held: list[str], cats: list[str], cfg: FeedbackConfig) -> str:
    """One sentence for the report: what the rule did about noise."""
    if held and len(held) == len(cats):
        return (f"held still: no category's gain per token or loss differs from the others' by more than "
                f"{cfg.noise_z:g} standard errors")
    if held:
        return (f"{', '.join(held)}: differences within {cfg.noise_z:g} standard errors, treated as average; "
                "the other categories moved")
    return "every category's evidence exceeded the noise"


def write_selection(selection: dict[str, Any], path: Path) -> Path:
    """Write a selection file atomically."""
    write_json(selection, path)
    return path
