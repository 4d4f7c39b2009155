"""Balancing a real, skewed mix: temperature, weights, caps, budget, minimums, selection files, determinism."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import polars as pl
import pytest

from curator.config import BalanceConfig
from curator.steps.balance import BalanceResult, SelectionFileError, balance, priority_keys

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
from pack_data import mix_table

pytestmark = pytest.mark.shared


@pytest.fixture(scope="module")
def mix(shared_data: Path) -> pl.DataFrame:
    """The real mix (math-heavy), with a token estimate from the text length."""
    df = pl.from_arrow(mix_table(shared_data, per_source=400))
    text = pl.col("messages").list.eval(pl.element().struct.field("content")).list.join("\n")
    return df.with_columns((text.str.len_chars() // 4 + 8).alias("n_tokens"))


def _share(report: dict, key: str = "after") -> dict[str, float]:
    total = sum(v["tokens"] for v in report[key].values())
    return {g: v["tokens"] / total for g, v in report[key].items()}


def test_natural_mix_keeps_everything(mix: pl.DataFrame) -> None:
    res = balance(mix, BalanceConfig(), seed=0)
    assert res.selected.height == mix.height and res.dropped.height == 0
    assert res.report["before"] == res.report["after"]


def test_temperature_flattens_a_skewed_mix(mix: pl.DataFrame) -> None:
    budget = int(mix["n_tokens"].sum() * 0.3)
    flat = balance(mix, BalanceConfig(temperature=3.0, token_budget=budget), seed=0)
    before, after = _share(flat.report, "before"), _share(flat.report)
    assert max(after.values()) < max(before.values())
    assert min(after.values()) > min(before.values())
    assert sum(v["tokens"] for v in flat.report["after"].values()) <= budget
    assert sum(v["tokens"] for v in flat.report["after"].values()) > budget * 0.97


def test_weights_set_the_token_shares_under_a_budget(mix: pl.DataFrame) -> None:
    weights = {"math": 1.0, "code": 1.0, "general": 1.0, "chat": 1.0, "self_instruct": 1.0, "tool_use": 1.0}
    budget = 60_000
    res = balance(mix, BalanceConfig(token_budget=budget), seed=0, weights=weights)
    after = _share(res.report)
    assert all(abs(v - 1 / 6) < 0.02 for v in after.values()), after
    assert res.report["share_source"] == "weights"
    assert set(res.dropped["reason"].unique()) == {"balance_quota"}


def test_caps_and_minimums(mix: pl.DataFrame) -> None:
    cfg = BalanceConfig(caps={"math": 50, "code": 10}, min_per_category=30, token_budget=20_000, temperature=1.0)
    res = balance(mix, cfg, seed=0)
    counts = dict(res.selected.group_by("balance_group").len().iter_rows())
    assert counts["math"] <= 50 and counts["code"] == 10, "a cap is a hard limit, even below the minimum"
    assert all(n >= 30 for g, n in counts.items() if g != "code")
    before = res.report["before"]
    assert res.report["dropped"]["balance_cap"] == before["math"]["records"] - 50 + before["code"]["records"] - 10
    res2 = balance(mix.sample(fraction=1.0, shuffle=True, seed=5), cfg, seed=0)
    assert res2.selected["id"].to_list() == res.selected["id"].to_list()
    other = balance(mix, cfg, seed=1)
    assert other.selected["id"].to_list() != res.selected["id"].to_list()


def test_selection_file_weights_and_examples(mix: pl.DataFrame, tmp_path: Path) -> None:
    excluded = mix.filter(pl.col("category") == "code")["id"].head(5).to_list()
    path = tmp_path / "selection.json"
    path.write_text(
        json.dumps(
            {
                "category_weights": {"math": 0.1, "code": 3.0},
                "example_weights": {i: 0.0 for i in excluded},
                "round": 2,
                "notes": "extra keys are ignored",
            }
        )
    )
    res = balance(mix, BalanceConfig(weights_file=str(path), token_budget=40_000), seed=0)
    after = _share(res.report)
    assert after["code"] > 3 * after["math"]
    assert res.report["example_weights"] == 5
    assert not set(excluded) & set(res.selected["id"].to_list())
    assert set(res.dropped.filter(pl.col("reason") == "balance_zero_weight")["id"].to_list()) == set(excluded)
    path.write_text('{"category_weights": {"math": "high"}}')
    with pytest.raises(SelectionFileError, match="category_weights"):
        balance(mix, BalanceConfig(weights_file=str(path)), seed=0)


def test_group_by_source_file(mix: pl.DataFrame) -> None:
    res = balance(mix, BalanceConfig(by="source", caps={"gsm8k_train.jsonl": 7}), seed=0)
    assert res.report["after"]["gsm8k_train.jsonl"]["records"] == 7
    assert "fastchat_dummy_conversation_sharegpt.json" in res.report["before"]


def _total(res: BalanceResult) -> int:
    return sum(v["tokens"] for v in res.report["after"].values())


def test_a_tiny_category_gives_its_share_to_the_others(mix: pl.DataFrame) -> None:
    tiny_ids = mix.filter(pl.col("category") == "tool_use").sort("id")["id"].head(3).to_list()
    small = mix.filter((pl.col("category") != "tool_use") | pl.col("id").is_in(tiny_ids))
    tiny_tokens = int(small.filter(pl.col("category") == "tool_use")["n_tokens"].sum())
    budget = 30_000
    cats = sorted(small["category"].unique().to_list())
    res = balance(small, BalanceConfig(token_budget=budget), seed=0, weights=dict.fromkeys(cats, 1.0))
    after = res.report["after"]
    assert after["tool_use"] == {"records": 3, "tokens": tiny_tokens}, "it supplies everything it has"
    assert tiny_tokens < budget / len(cats) / 4, "and that is far below its equal share"
    others = [after[c]["tokens"] for c in cats if c != "tool_use"]
    assert max(others) - min(others) < 2 * int(small["n_tokens"].max()), "the rest is shared out evenly"
    left = res.report["budget_left_tokens"]
    assert left == budget - _total(res) and 0 <= left < int(small["n_tokens"].max()), "filled to one record"


def test_every_weighting_fills_the_budget_to_within_one_record(mix: pl.DataFrame) -> None:
    budget = 12_000
    longest = int(mix["n_tokens"].max())
    cats = sorted(mix["category"].unique().to_list())
    skewed = {c: (8.0 if c == "chat" else 1.0) for c in cats}
    totals = []
    for cfg, weights in ((BalanceConfig(token_budget=budget, temperature=1000.0), None),
                         (BalanceConfig(token_budget=budget, temperature=1.0), None),
                         (BalanceConfig(token_budget=budget), skewed)):
        res = balance(mix, cfg, seed=0, weights=weights)
        totals.append(_total(res))
        assert budget - longest < totals[-1] <= budget
        # each group took a prefix of its records in key order, and the next one of every group did not fit
        left = res.report["budget_left_tokens"]
        assert left == budget - totals[-1]
        unchosen = mix.filter(~pl.col("id").is_in(res.selected["id"].implode()))
        keyed = unchosen.with_columns(pl.Series("key", priority_keys(unchosen["id"].to_list(), 0,
                                                                     [1.0] * unchosen.height)))
        chosen_keys = priority_keys(res.selected["id"].to_list(), 0, [1.0] * res.selected.height)
        chosen = res.selected.with_columns(pl.Series("key", chosen_keys))
        for cat, nxt in keyed.sort("key", descending=True).group_by("category", maintain_order=True).first().select(
                "category", "n_tokens").iter_rows():
            assert nxt > left, f"{cat}'s next record ({nxt} tokens) would have fitted the {left} left"
            lowest = chosen.filter(pl.col("category") == cat)["key"].min()
            assert lowest is None or lowest > keyed.filter(pl.col("category") == cat)["key"].max(), "a prefix"
    assert max(totals) - min(totals) < longest, totals
    again = balance(mix, BalanceConfig(token_budget=budget), seed=0, weights=skewed)
    shuffled = balance(mix.sample(fraction=1.0, shuffle=True, seed=3), BalanceConfig(token_budget=budget), seed=0,
                       weights=skewed)
    assert again.selected["id"].to_list() == shuffled.selected["id"].to_list() == res.selected["id"].to_list()


def test_the_fill_follows_the_shares_and_leaves_zero_weight_groups_out(mix: pl.DataFrame) -> None:
    cats = sorted(mix["category"].unique().to_list())
    weights = {c: (0.0 if c == "code" else 1.0) for c in cats}
    res = balance(mix, BalanceConfig(token_budget=20_000, min_per_category=0), seed=0, weights=weights)
    assert res.report["after"]["code"]["records"] == 0, "the budget's rest never goes to a zero share"
    quotas = res.report["quotas_tokens"]
    longest = int(mix["n_tokens"].max())
    for c in cats:
        assert abs(res.report["after"][c]["tokens"] - quotas[c]) <= longest, c
