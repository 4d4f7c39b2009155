"""Group-aware split on a real mix: clusters never straddle, categories are stratified, results are stable."""

from __future__ import annotations

import sys
from pathlib import Path

import polars as pl
import pytest

from curator.config import SplitConfig
from curator.format.split import assign_splits

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
from pack_data import mix_table

pytestmark = pytest.mark.shared


@pytest.fixture(scope="module")
def mix(shared_data: Path) -> pl.DataFrame:
    """Real records with near-duplicate clusters of 1-6 records, as dedup would mark them."""
    df = pl.from_arrow(mix_table(shared_data, per_source=300)).sort("id")
    idx = pl.int_range(pl.len())
    return df.with_columns(
        pl.when(idx % 3 == 0).then(pl.lit("c") + (idx % 97).cast(pl.String)).otherwise(None).alias("cluster_id")
    )


def test_clusters_and_conversations_stay_on_one_side(mix: pl.DataFrame) -> None:
    out = assign_splits(mix, SplitConfig(eval_fraction=0.2, test_fraction=0.1), seed=0)
    assert out.height == mix.height and out["id"].n_unique() == mix.height
    per_cluster = out.filter(pl.col("cluster_id").is_not_null()).group_by("cluster_id").agg(pl.col("split").n_unique())
    assert per_cluster["split"].max() == 1
    assert set(out["split"].unique()) == {"train", "eval", "test"}


def test_stratified_by_category(mix: pl.DataFrame) -> None:
    out = assign_splits(mix, SplitConfig(eval_fraction=0.2), seed=0)
    shares = out.group_by("category").agg((pl.col("split") == "eval").mean().alias("eval_share"), pl.len())
    for cat, share, n in shares.iter_rows():
        assert abs(share - 0.2) < 0.1, (cat, share, n)


def test_deterministic_and_order_independent(mix: pl.DataFrame) -> None:
    cfg = SplitConfig(eval_fraction=0.1, test_fraction=0.05)
    a = assign_splits(mix, cfg, seed=3)
    b = assign_splits(mix.sample(fraction=1.0, shuffle=True, seed=1), cfg, seed=3)
    assert a.select("id", "split").equals(b.select("id", "split"))
    c = assign_splits(mix, cfg, seed=4)
    assert not a["split"].equals(c["split"])


def test_no_eval_fraction_means_all_train(mix: pl.DataFrame) -> None:
    out = assign_splits(mix.drop("cluster_id"), SplitConfig(eval_fraction=0.0), seed=0)
    assert out["split"].unique().to_list() == ["train"]
