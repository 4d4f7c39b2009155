"""Cluster bookkeeping shared by every dedup step: tie-break fields, components, representatives.

Exact, MinHash and semantic dedup all end the same way: edges between rows become connected
components, and each component gets one representative (highest quality_score, then longest,
then smallest id). The rule lives here once so every step and both engines apply the same one.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import polars as pl
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from curator.steps.base import ROW

COMP = "_comp"  # connected-component label column


def tie_break_columns(batch: pl.DataFrame, text: pl.Expr) -> list[pl.Expr]:
    """`id`, `quality_score` (0 when absent) and `n_chars` (the view's length when absent)."""
    quality = pl.col("quality_score").cast(pl.Float64) if "quality_score" in batch.columns else pl.lit(0.0)
    n_chars = pl.col("n_chars").cast(pl.Int64) if "n_chars" in batch.columns else text.str.len_chars()
    return [pl.col("id"), quality.fill_null(0.0).alias("quality_score"), n_chars.fill_null(0).alias("n_chars")]


def assign_clusters(nodes: pl.DataFrame, src: np.ndarray, dst: np.ndarray, prefix: str) -> pl.DataFrame:
    """Clusters = connected components of the edges (positions in `nodes`); one representative each.

    `nodes` has `row` plus the tie-break columns. Returns what `rank_clusters` returns.
    """
    n = nodes.height
    graph = coo_matrix((np.ones(len(src), dtype=np.int8), (src, dst)), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    return rank_clusters(nodes.with_columns(pl.Series(COMP, labels, dtype=pl.Int64)), prefix)


def rank_clusters(nodes: pl.DataFrame, prefix: str) -> pl.DataFrame:
    """One representative per component `_comp`: highest quality_score, longest, smallest id, smallest row.

    Returns `row`, `{prefix}_cluster_id` (the representative's id), `{prefix}_cluster_size`,
    `{prefix}_dup_of` (null for representatives) and `_rep_row`, sorted by row. Components must be
    whole in `nodes` (the Ray engine calls this per shuffle bucket of `_comp`).
    """
    ranked = nodes.sort([COMP, "quality_score", "n_chars", "id", ROW], descending=[False, True, True, False, False])
    rep_id = pl.col("id").first().over(COMP)
    rep_row = pl.col(ROW).first().over(COMP)
    return ranked.select(
        ROW,
        rep_id.alias(f"{prefix}_cluster_id"),
        pl.len().over(COMP).cast(pl.Int64).alias(f"{prefix}_cluster_size"),
        pl.when(pl.col(ROW) != rep_row).then(rep_id).otherwise(None).alias(f"{prefix}_dup_of"),
        rep_row.alias("_rep_row"),
    ).sort(ROW)


def concat_partials(partials: Iterable[pl.DataFrame], columns: dict[str, pl.DataType]) -> pl.DataFrame:
    """All partials as one frame; no partial, or only zero-row ones, give a zero-row frame with `row`,
    the tie-break fields and the step's `columns`, so a run where no row reaches a step still reduces."""
    parts = [p for p in partials if p.height]
    if parts:
        return pl.concat(parts, how="vertical_relaxed")
    return pl.DataFrame(
        schema={ROW: pl.Int64, "id": pl.String, "quality_score": pl.Float64, "n_chars": pl.Int64, **columns}
    )
