"""Balance the mix by category (or source, or language) under weights, caps and a token budget.

How a group's share is chosen, in order of precedence:
1. explicit weights: the `weights` argument, else `balance.weights`, else the `category_weights` of
   `balance.weights_file` (groups a weight map does not name get the mean of the named weights);
2. otherwise temperature sampling over the groups' token counts: share_g ∝ tokens_g ** (1 / T),
   so T = 1 keeps the natural mix and T > 1 flattens a skewed one.

Quotas (in tokens): with `token_budget` set, water-filling: each group is offered share_g × budget,
and what a group cannot supply (too little data, or its cap in records) is re-offered to the others
in proportion to their shares. Without a budget the total is the available tokens and nothing is
re-offered: over-represented groups are downsampled to their share, none is upsampled (records are
never repeated, so sample ids stay unique and splits stay clean). Every group keeps at least
`min_per_category` records when it has them.

Which records fill a quota: each record gets a priority key from a hash of (seed, id) and its
example weight (weighted sampling without replacement, Efraimidis–Spirakis: key = log(u) / w); a
group takes records in key order while they fit its quota. The choice depends only on ids, seed and
weights, never on input order. Example weights <= 0 exclude a record.

Filling the budget: whole records leave each group short of its quota by up to one record, and
those remainders add up (four groups of ~300-token records left a 4,096-token budget 15% unspent).
With a budget, the unspent tokens are then offered to the groups with a positive share: the group
furthest below its quota (ties: name) takes its next record in key order if it fits what is left,
until no group's next record fits. So the selection holds the budget to within the shortest next
record, whatever the weights: rounds and arms at one budget train on the same number of tokens
(the minimums may still exceed a budget too small to hold them).

Selection file (`balance.weights_file`, written by the feedback loop), JSON:
    {"category_weights": {"math": 2.0, ...}, "example_weights": {"<record id>": 0.5, ...}}
Both keys are optional; other keys are ignored.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from curator.config import BalanceConfig

GROUP = "balance_group"
NULL_GROUP = "uncategorized"


class SelectionFileError(Exception):
    """The selection/weights file cannot be used; the message names the file and the problem."""


@dataclass
class BalanceResult:
    """The records kept, why the others were not, and the numbers the report plots."""

    selected: pl.DataFrame  # the input rows that were kept, sorted by id
    dropped: pl.DataFrame  # id, balance_group, reason ("balance_zero_weight" | "balance_cap" | "balance_quota")
    report: dict[str, Any]


def read_selection_file(path: str | Path) -> tuple[dict[str, float], dict[str, float]]:
    """Read `{"category_weights": {...}, "example_weights": {...}}`; tolerant of extra keys."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise SelectionFileError(f"{path}: cannot read the selection file: {exc}") from exc
    if not isinstance(data, dict):
        raise SelectionFileError(f"{path}: expected a JSON object with category_weights/example_weights")
    out = []
    for key in ("category_weights", "example_weights"):
        value = data.get(key) or {}
        if not isinstance(value, dict) or not all(
            isinstance(v, (int, float)) and math.isfinite(v) and v >= 0 for v in value.values()
        ):
            raise SelectionFileError(f"{path}: '{key}' must map names to finite numbers >= 0")
        out.append({str(k): float(v) for k, v in value.items()})
    return out[0], out[1]


def group_expr(by: str) -> pl.Expr:
    """The grouping key for `balance.by`; a null becomes 'uncategorized', a source its file name."""
    key = pl.col("source").struct.field("file").str.replace(r"^.*[\\/]", "") if by == "source" else pl.col(by)
    return key.fill_null(NULL_GROUP).alias(GROUP)


def priority_keys(ids: list[str], seed: int, weights: list[float]) -> list[float]:
    """Weighted-sampling keys log(u)/w with u from sha256(seed:id): larger keys are taken first."""
    keys = []
    for rid, w in zip(ids, weights, strict=True):
        h = int.from_bytes(hashlib.sha256(f"{seed}:{rid}".encode()).digest()[:8], "big")
        u = (h + 0.5) / 2.0**64
        keys.append(math.log(u) / w if w > 0 else -math.inf)
    return keys


def _shares(tokens: dict[str, int], cfg: BalanceConfig, weights: dict[str, float] | None) -> tuple[dict, str]:
    """Normalised target share per group, and where it came from."""
    if weights:
        named = [v for g, v in weights.items() if g in tokens]
        default = sum(named) / len(named) if named else 1.0
        raw = {g: weights.get(g, default) for g in tokens}
        source = "weights"
    else:
        raw = {g: t ** (1.0 / cfg.temperature) for g, t in tokens.items()}
        source = "temperature"
    total = sum(raw.values())
    return ({g: (v / total if total > 0 else 0.0) for g, v in raw.items()}, source)


def _quotas(shares: dict[str, float], avail: dict[str, int], budget: int | None) -> dict[str, float]:
    """Token quota per group: water-filling to `budget`, or share × available without a budget."""
    total_avail = sum(avail.values())
    if budget is None:
        return {g: min(avail[g], shares[g] * total_avail) for g in shares}
    quota = {g: 0.0 for g in shares}
    open_groups = {g for g in shares if shares[g] > 0 and avail[g] > 0}
    left = float(min(budget, total_avail))
    while open_groups and left > 1e-9:
        weight = sum(shares[g] for g in open_groups)
        offer = {g: left * shares[g] / weight for g in open_groups}
        left = 0.0
        for g in sorted(open_groups):
            take = min(offer[g], avail[g] - quota[g])
            quota[g] += take
            left += offer[g] - take
            if avail[g] - quota[g] <= 1e-9:
                open_groups.discard(g)
    return quota


def _fill(
    lengths: dict[str, list[int]], quotas: dict[str, float], shares: dict[str, float], minimum: int,
    budget: int | None,
) -> dict[str, int]:
    """How many of each group's records (in key order) to take: minimums, then the quota, then the budget's rest.

    A plain loop over the groups' next records: at most one step per record added after the quotas,
    no library offers this (it is the rounding step of a largest-remainder apportionment).
    """
    taken: dict[str, int] = {}
    filled: dict[str, int] = {}
    for g, lens in lengths.items():
        n, total = 0, 0
        while n < len(lens) and (n < minimum or total + lens[n] <= quotas.get(g, 0.0) + 1e-6):
            total += lens[n]
            n += 1
        taken[g], filled[g] = n, total
    if budget is None:
        return taken
    left = budget - sum(filled.values())
    while True:
        fits = [g for g, lens in lengths.items()
                if shares.get(g, 0.0) > 0 and taken[g] < len(lens) and lens[taken[g]] <= left]
        if not fits:
            return taken
        g = min(fits, key=lambda k: (filled[k] - quotas.get(k, 0.0), k))
        size = lengths[g][taken[g]]
        taken[g] += 1
        filled[g] += size
        left -= size


def balance(
    df: pl.DataFrame,
    cfg: BalanceConfig,
    seed: int,
    *,
    weights: dict[str, float] | None = None,
    example_weights: dict[str, float] | None = None,
    token_col: str = "n_tokens",
) -> BalanceResult:
    """Choose which records to keep so the mix follows the configured shares, caps and budget."""
    file_weights: dict[str, float] = {}
    if cfg.weights_file:
        file_weights, file_examples = read_selection_file(cfg.weights_file)
        example_weights = {**file_examples, **(example_weights or {})}
    category_weights = weights or cfg.weights or file_weights or None
    ex_w = example_weights or {}
    frame = df.with_columns(group_expr(cfg.by)).sort("id")
    ids = frame["id"].to_list()
    w = [ex_w.get(i, 1.0) for i in ids]
    frame = frame.with_columns(
        pl.Series("_w", w, dtype=pl.Float64), pl.Series("_key", priority_keys(ids, seed, w), dtype=pl.Float64)
    ).sort([GROUP, "_key", "id"], descending=[False, True, False])
    frame = frame.with_columns(pl.int_range(pl.len()).over(GROUP).alias("_rank"))
    eligible = frame.filter(pl.col("_w") > 0)
    no_cap = pl.lit(2**62, dtype=pl.Int64)
    cap = pl.col(GROUP).replace_strict(cfg.caps, default=no_cap, return_dtype=pl.Int64) if cfg.caps else no_cap
    capped = eligible.filter(pl.col("_rank") < cap)
    before = _dist(frame, token_col)
    avail = {g: 0 for g in before}
    avail.update(dict(capped.group_by(GROUP).agg(pl.col(token_col).sum()).iter_rows()))
    shares, share_source = _shares({g: v["tokens"] for g, v in before.items()}, cfg, category_weights)
    quotas = _quotas(shares, avail, cfg.token_budget)
    lengths = {g: [int(t) for t in ts] for g, ts in
               capped.group_by(GROUP, maintain_order=True).agg(pl.col(token_col)).iter_rows()}
    taken = _fill(lengths, quotas, shares, cfg.min_per_category, cfg.token_budget)
    take_col = pl.col(GROUP).replace_strict(taken, default=0, return_dtype=pl.Int64)
    kept = capped.filter(pl.col("_rank") < take_col)
    kept_ids = set(kept["id"].to_list())
    capped_ids = set(capped["id"].to_list())
    dropped = (
        frame.filter(~pl.col("id").is_in(list(kept_ids)))
        .with_columns(
            pl.when(pl.col("_w") <= 0)
            .then(pl.lit("balance_zero_weight"))
            .when(~pl.col("id").is_in(list(capped_ids)))
            .then(pl.lit("balance_cap"))
            .otherwise(pl.lit("balance_quota"))
            .alias("reason")
        )
        .select("id", GROUP, "reason")
        .sort("id")
    )
    selected = kept.drop("_w", "_key", "_rank").sort("id")
    after = _dist(selected, token_col)
    report = {
        "by": cfg.by,
        "share_source": share_source,
        "temperature": cfg.temperature,
        "token_budget": cfg.token_budget,
        "caps": dict(sorted(cfg.caps.items())),
        "min_per_category": cfg.min_per_category,
        "weights_used": {g: round(shares[g], 6) for g in sorted(shares)},
        "quotas_tokens": {g: int(quotas[g]) for g in sorted(quotas)},
        "budget_left_tokens": None if cfg.token_budget is None
        else cfg.token_budget - int(selected[token_col].sum()),
        "example_weights": len(ex_w),
        "before": before,
        "after": {g: after.get(g, {"records": 0, "tokens": 0}) for g in sorted(before)},
        "dropped": dict(sorted(dropped.group_by("reason").len().iter_rows())),
    }
    return BalanceResult(selected, dropped, report)


def _dist(frame: pl.DataFrame, token_col: str) -> dict[str, dict[str, int]]:
    """Records and tokens per group, sorted by group."""
    rows = frame.group_by(GROUP).agg(pl.len().alias("records"), pl.col(token_col).sum().alias("tokens"))
    return {g: {"records": int(n), "tokens": int(t)} for g, n, t in sorted(rows.iter_rows())}
