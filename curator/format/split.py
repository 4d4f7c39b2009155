"""Group-aware, stratified, deterministic train/eval/test split.

A group is a near-duplicate cluster (`cluster_id` from dedup; a record without one is its own group,
and a record is a whole conversation), joined with every record of the same chat session (`session`,
from a chat export's meta: its samples share context turns), so no cluster and no conversation
straddles two splits. Each group is assigned the category most of its records have (ties: the
smallest name), and within each category the groups are visited in the order of a hash of
(seed, group): a group goes to eval while eval holds fewer than round(eval_fraction × n) records of
that category, then to test likewise, else to train. The result depends only on ids, clusters,
sessions, categories, the fractions and the seed.
"""

from __future__ import annotations

import hashlib

import polars as pl

from curator.config import SplitConfig

SPLIT = "split"


def _hash_key(seed: int, group: str) -> str:
    """Stable order of groups within a stratum."""
    return hashlib.sha256(f"{seed}:{group}".encode()).hexdigest()


def _session_groups(frame: pl.DataFrame) -> pl.DataFrame:
    """`_group` widened to connected components of (cluster group, session): a session's samples stay together."""
    pairs = frame.filter(pl.col("session").is_not_null()).select("_group", "session").unique()
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for group, session in sorted(pairs.iter_rows()):
        a, b = find(group), find(f"session:{session}")
        if a != b:
            parent[max(a, b)] = min(a, b)
    roots = {g: find(g) for g in parent if not g.startswith("session:")}
    return frame.with_columns(pl.col("_group").replace(roots))


def assign_splits(df: pl.DataFrame, cfg: SplitConfig, seed: int, *, stratify: str = "category") -> pl.DataFrame:
    """Return `df` with a `split` column ("train" | "eval" | "test"), sorted by id."""
    group = pl.col("cluster_id").fill_null(pl.col("id")) if "cluster_id" in df.columns else pl.col("id")
    frame = df.with_columns(group.alias("_group"), pl.col(stratify).fill_null("uncategorized").alias("_stratum"))
    if "session" in frame.columns:
        frame = _session_groups(frame)
    votes = (
        frame.group_by("_group", "_stratum")
        .len()
        .sort(["_group", "len", "_stratum"], descending=[False, True, False])
        .group_by("_group", maintain_order=True)
        .first()
    )
    sizes = frame.group_by("_group").len().rename({"len": "_size"})
    groups = votes.select("_group", "_stratum").join(sizes, on="_group").sort("_group")
    assignment: dict[str, str] = {}
    for _, part in groups.group_by("_stratum", maintain_order=True):
        rows = sorted(part.iter_rows(), key=lambda r: _hash_key(seed, r[0]))
        total = sum(r[2] for r in rows)
        want_eval = round(cfg.eval_fraction * total)
        want_test = round(cfg.test_fraction * total)
        n_eval = n_test = 0
        for gid, _, size in rows:
            if n_eval < want_eval:
                assignment[gid], n_eval = "eval", n_eval + size
            elif n_test < want_test:
                assignment[gid], n_test = "test", n_test + size
            else:
                assignment[gid] = "train"
    split = pl.col("_group").replace_strict(assignment, return_dtype=pl.String).alias(SPLIT)
    return frame.with_columns(split).drop("_group", "_stratum").sort("id")


def record_sides(df: pl.DataFrame, cfg: SplitConfig, seed: int) -> pl.DataFrame:
    """(id, split) of every record: the one assignment that pack and export share (same records, same sides)."""
    cols = [c for c in ("id", "category", "cluster_id") if c in df.columns]
    return assign_splits(df.select(cols), cfg, seed).select("id", SPLIT)
