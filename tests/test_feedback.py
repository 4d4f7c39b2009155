"""Feedback: category weights move toward what training helped least; examples by IFD and loss."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

from curator.record import schema_errors
from curator.select.feedback import (
    CategoryState,
    FeedbackConfig,
    RoundPoint,
    build_selection,
    category_update,
    example_weights,
    fit_exponent,
    marginal_update,
    write_selection,
)
from curator.select.loop import compare, pool_tokens
from curator.steps.balance import read_selection_file

# Per-category eval losses as the demo's tiny model produces them: math learns fastest.
BASE = {"chat": 5.10, "instructions": 5.40, "math": 4.60, "tool_use": 4.90}
ROUND = {"chat": 4.20, "instructions": 4.95, "math": 3.10, "tool_use": 3.90}
TOKENS = {"chat": 40_000, "instructions": 12_000, "math": 30_000, "tool_use": 10_000}


def test_weight_moves_to_the_category_training_helped_least() -> None:
    weights = {"chat": 0.3, "instructions": 0.2, "math": 0.3, "tool_use": 0.2}
    new, detail = category_update(weights, ROUND, BASE, TOKENS, FeedbackConfig())
    assert sum(new.values()) == pytest.approx(1.0, abs=1e-5)
    # instructions kept 92% of its loss, math only 67%: instructions gains, math loses
    assert new["instructions"] > weights["instructions"] and new["math"] < weights["math"]
    assert detail["instructions"]["excess"] > 0 > detail["math"]["excess"]
    assert detail["math"]["relative_loss"] == pytest.approx(3.10 / 4.60, abs=1e-6)


def test_floor_and_smoothing_keep_every_category_alive() -> None:
    weights = {"chat": 0.97, "instructions": 0.01, "math": 0.01, "tool_use": 0.01}
    cfg = FeedbackConfig(eta=5.0, floor=0.05)
    new, _ = category_update(weights, ROUND, BASE, TOKENS, cfg)
    assert min(new.values()) >= 0.05 - 1e-6
    # no eval signal at all: weights only renormalise and smooth, never jump
    same, _ = category_update(weights, {}, {}, TOKENS, FeedbackConfig(smoothing=0.0, floor=0.0))
    assert same == pytest.approx(weights, abs=1e-6)


def _scores() -> pl.DataFrame:
    rows = []
    for i in range(20):
        rows.append({"id": f"{i:024x}", "category": "math", "loss_cond": 1.0 + i * 0.1, "loss_alone": 4.0,
                     "ifd": (1.0 + i * 0.1) / 4.0})
    rows.append({"id": "f" * 24, "category": "math", "loss_cond": 3.0, "loss_alone": 2.0, "ifd": 1.5})
    rows.append({"id": "e" * 24, "category": "chat", "loss_cond": None, "loss_alone": None, "ifd": None})
    return pl.DataFrame(rows, schema_overrides={"loss_cond": pl.Float64, "loss_alone": pl.Float64, "ifd": pl.Float64})


def test_example_weights_exclude_noise_and_downweight_what_is_known() -> None:
    weights, reasons = example_weights(_scores(), FeedbackConfig(easy_fraction=0.1, easy_weight=0.25))
    assert weights["f" * 24] == 0.0 and reasons["f" * 24] == "ifd_noise"  # the prompt does not help: noise
    assert reasons[f"{0:024x}"] == "already_known" and weights[f"{0:024x}"] == 0.25
    assert reasons["e" * 24] == "unscored" and weights["e" * 24] == 1.0
    learnable = [weights[f"{i:024x}"] for i in range(3, 20)]
    assert learnable == sorted(learnable), "higher IFD (harder, still learnable) weighs more"
    assert min(learnable) >= 0.5 and max(learnable) <= 2.0


def test_selection_file_validates_and_balance_reads_it(tmp_path: Path) -> None:
    weights = {"chat": 0.25, "instructions": 0.25, "math": 0.25, "tool_use": 0.25}
    selection = build_selection(round_index=0, weights=weights, loss=ROUND, ref_loss=BASE, tokens=TOKENS,
                                scores=_scores(), cfg=FeedbackConfig(rule="excess"))
    assert schema_errors(selection, "selection.schema.json") == []
    path = write_selection(selection, tmp_path / "selection.json")
    cats, examples = read_selection_file(path)
    assert cats == selection["category_weights"] and examples["f" * 24] == 0.0
    assert json.loads(path.read_text())["round"] == 1
    bad = dict(selection, example_weights={"not-an-id": 1.0})
    assert schema_errors(bad, "selection.schema.json")


def test_absolute_reference_moves_weight_to_the_worst_category() -> None:
    weights = {"chat": 0.25, "instructions": 0.25, "math": 0.25, "tool_use": 0.25}
    new, _ = category_update(weights, ROUND, dict.fromkeys(ROUND, 1.0), TOKENS, FeedbackConfig(reference="none"))
    assert max(new, key=new.get) == "instructions"  # the highest eval loss (4.95)
    assert min(new, key=new.get) == "math"  # the lowest (3.10)


# --- the marginal rule: learning curves, noise, pools (synthetic round results shaped like SmolLM2's) ---

EQUAL = {"chat": 0.25, "instructions": 0.25, "math": 0.25, "tool_use": 0.25}


def _state(gain: float, loss: float, tokens: float = 4000, gain_se: float = 0.01, loss_se: float = 0.03,
           pool: float = 1e6) -> CategoryState:
    return CategoryState((RoundPoint(tokens, gain, gain_se),), loss, loss_se, pool)


def test_marginal_rule_moves_tokens_to_the_fastest_learner_and_the_worst_category() -> None:
    # chat: highest loss and learns fastest; tool_use: lowest loss, barely moves
    states = {"chat": _state(0.30, 2.30), "instructions": _state(0.12, 2.10), "math": _state(0.20, 1.30),
              "tool_use": _state(0.05, 0.90)}
    new, detail, held = marginal_update(EQUAL, states, 16000, FeedbackConfig(max_change=2.0, floor=0.1))
    assert held == [] and sum(new.values()) == pytest.approx(1.0, abs=1e-5)
    assert max(new, key=new.get) == "chat" and min(new, key=new.get) == "tool_use"
    assert new["chat"] <= 0.5 + 1e-6, "a share never more than doubles in one round"
    assert new["tool_use"] >= 0.1 - 1e-6 and new["tool_use"] >= 0.125 - 1e-6  # floor and max_change
    assert detail["chat"]["marginal_gain_per_1k"] > detail["tool_use"]["marginal_gain_per_1k"]


def test_marginal_rule_holds_still_within_noise() -> None:
    # gains and losses differ by less than two standard errors: no evidence to move on
    states = {c: _state(0.10 + 0.01 * i, 2.0 + 0.02 * i, gain_se=0.05, loss_se=0.2) for i, c in enumerate(EQUAL)}
    new, _, held = marginal_update(EQUAL, states, 16000, FeedbackConfig())
    assert held == sorted(EQUAL) and new == EQUAL
    selection = build_selection(round_index=0, weights=EQUAL, cfg=FeedbackConfig(), states=states, budget=16000)
    assert selection["held_still"] == sorted(EQUAL) and selection["note"].startswith("held still")
    assert schema_errors(selection, "selection.schema.json") == []
    # one clear outlier moves; the noisy rest are treated as average, and the note says which
    states = {c: _state(0.10 + 0.01 * i, 2.0 + 0.02 * i, gain_se=0.2, loss_se=0.2) for i, c in enumerate(EQUAL)}
    states["math"] = _state(0.60, 2.0, gain_se=0.01, loss_se=0.2)
    new, _, held = marginal_update(EQUAL, states, 16000, FeedbackConfig())
    assert "math" not in held and new["math"] > 0.25 and len({new[c] for c in held}) == 1


def test_marginal_rule_never_asks_more_than_the_unused_pool() -> None:
    states = {"chat": _state(0.40, 2.40, pool=3000), "instructions": _state(0.10, 2.0),
              "math": _state(0.10, 1.3), "tool_use": _state(0.10, 1.0)}
    new, detail, _ = marginal_update(EQUAL, states, 16000, FeedbackConfig(max_change=3.0))
    assert new["chat"] * 16000 <= 3000 + 1
    assert detail["chat"]["capped_by_pool"] and detail["chat"]["unmet_tokens"] > 0
    assert detail["chat"]["asked_tokens"] == detail["chat"]["unmet_tokens"] + round(new["chat"] * 16000)
    assert not detail["math"]["capped_by_pool"] and detail["math"]["unmet_tokens"] == 0


def test_learning_curve_exponent_is_fitted_once_token_counts_differ() -> None:
    one = {"math": _state(0.2, 1.3)}
    assert fit_exponent(one, 0.5) == 0.5  # one token count: the prior
    beta = 0.3
    points = tuple(RoundPoint(t, 0.002 * t**beta, 0.001) for t in (2000.0, 4000.0, 8000.0))
    curve = {"math": CategoryState(points, 1.2, 0.03, 1e6), "chat": CategoryState(points, 2.0, 0.03, 1e6)}
    assert fit_exponent(curve, 0.5) == pytest.approx(beta, abs=0.05)


def _eval(losses: dict[str, list[float]]) -> dict:
    per_sample = {}
    for cat, values in losses.items():
        for i, v in enumerate(values):
            per_sample[f"{cat}{i}"] = {"loss": v, "tokens": 100, "category": cat}
    per_cat = {c: {"loss": sum(v) / len(v)} for c, v in losses.items()}
    return {"per_sample": per_sample, "per_category": per_cat}


def test_verdict_is_paired_and_says_within_noise() -> None:
    before = _eval({"chat": [2.0, 2.4, 2.2, 2.6], "math": [1.0, 1.4, 1.2, 1.1]})
    after = _eval({"chat": [1.9, 2.3, 2.1, 2.5], "math": [1.05, 1.3, 1.25, 1.1]})
    v = compare(before, after)
    assert v["per_category"]["chat"]["delta"] == pytest.approx(-0.1)
    assert v["per_category"]["chat"]["verdict"] == "better"  # every record 0.1 better: paired SE 0
    assert v["per_category"]["math"]["verdict"] == "within noise"
    assert v["worst"]["before_category"] == v["worst"]["after_category"] == "chat"
    assert v["worst"]["verdict"] == "better" and v["macro"]["delta"] == pytest.approx(-0.05)


def test_pool_tokens_count_the_train_side_minus_exclusions() -> None:
    records = pl.DataFrame({
        "id": ["a", "b", "c", "d", "e"], "category": ["math", "math", "chat", "chat", None],
        "split": ["train", None, "train", "eval", "train"],
        "status": ["packed", "balance_quota", "packed", "packed", "packed"], "n_tokens": [100, 50, 70, 80, 10],
    })
    assert pool_tokens(records, set()) == {"chat": 70, "math": 150, "uncategorized": 10}
    assert pool_tokens(records, {"b"}) == {"chat": 70, "math": 100, "uncategorized": 10}


def test_a_category_without_eval_records_counts_as_average() -> None:
    states = {"instructions": _state(0.30, 2.4), "math": _state(0.10, 1.3), "tool_use": _state(0.05, 0.9)}
    new, detail, held = marginal_update(EQUAL, states, 16000, FeedbackConfig())
    assert "chat" in held and detail["chat"]["eval_loss"] is None
    assert new["instructions"] > new["chat"] > new["tool_use"]


# --- the worst rule: the worst category's predicted loss, the predicted macro mean not rising ---

def _predicted_mean(detail: dict, key: str) -> float:
    return sum(d[key] for d in detail.values()) / len(detail)


def test_worst_rule_feeds_a_slow_worst_category_that_marginal_starves() -> None:
    # shaped like SmolLM2 at 2k tokens a category: instructions is worst and learns slowly, math learns fastest
    states = {"chat": _state(0.03, 2.05, tokens=2000), "instructions": _state(0.05, 2.45, tokens=2000, loss_se=0.2),
              "math": _state(0.15, 1.29, tokens=2000), "tool_use": _state(0.08, 1.16, tokens=2000)}
    marginal, _, _ = marginal_update(EQUAL, states, 8000, FeedbackConfig(floor=0.1))
    worst, detail, held = marginal_update(EQUAL, states, 8000, FeedbackConfig(rule="worst", floor=0.1))
    assert held == [] and sum(worst.values()) == pytest.approx(1.0, abs=1e-5)
    assert max(marginal, key=marginal.get) == "math", "marginal: the fastest learner"
    assert max(worst, key=worst.get) == "instructions" and worst["instructions"] > marginal["instructions"]
    assert worst["instructions"] <= 0.5 + 1e-6, "max_change bounds it as it bounds marginal"
    assert all(d["solver"] == "slsqp" for d in detail.values())
    before = {c: d["predicted_loss_before"] for c, d in detail.items()}
    after = {c: d["predicted_loss_after"] for c, d in detail.items()}
    assert before == {c: s.loss for c, s in states.items()}, "the curve is anchored at the measured loss"
    assert max(after.values()) < max(before.values())
    assert _predicted_mean(detail, "predicted_loss_after") <= _predicted_mean(detail, "predicted_loss_before") + 1e-6
    assert worst["math"] > worst["chat"], "the tokens the worst does not need go where they lower the mean most"


def test_worst_rule_stops_where_the_mean_would_rise() -> None:
    # the worst category barely learns, the others learn fast: feeding it all it could take would cost the mean
    states = {"chat": _state(0.20, 1.60, tokens=2000), "instructions": _state(0.02, 2.50, tokens=2000, gain_se=0.002,
              loss_se=0.1), "math": _state(0.25, 1.30, tokens=2000), "tool_use": _state(0.22, 1.20, tokens=2000)}
    cfg = FeedbackConfig(rule="worst", floor=0.05, max_change=3.5)
    new, detail, _ = marginal_update(EQUAL, states, 8000, cfg)
    mean_before = _predicted_mean(detail, "predicted_loss_before")
    mean_after = _predicted_mean(detail, "predicted_loss_after")
    assert mean_after == pytest.approx(mean_before, abs=1e-4), "the constraint binds"
    assert 0.25 < new["instructions"] < 0.85, "more for the worst, but less than its bound"
    assert detail["instructions"]["predicted_loss_after"] < detail["instructions"]["predicted_loss_before"]


def test_worst_rule_holds_still_within_noise_and_writes_a_valid_selection() -> None:
    states = {c: _state(0.10 + 0.01 * i, 2.0 + 0.02 * i, gain_se=0.05, loss_se=0.2) for i, c in enumerate(EQUAL)}
    cfg = FeedbackConfig(rule="worst")
    selection = build_selection(round_index=0, weights=EQUAL, cfg=cfg, states=states, budget=16000)
    assert selection["category_weights"] == EQUAL and selection["note"].startswith("held still")
    # a clearly worst, slow category; the others alike (within noise): any token moved to it would raise
    # the predicted mean, and nothing elsewhere can pay for it
    states["instructions"] = _state(0.05, 2.6, gain_se=0.005, loss_se=0.05)
    selection = build_selection(round_index=1, weights=EQUAL, cfg=cfg, states=states, budget=16000)
    assert selection["category_weights"]["instructions"] == pytest.approx(0.25, abs=1e-4)
    # once the others' curves differ, moving tokens from chat (slow) to math (fast) pays for the worst
    states |= {"chat": _state(0.03, 2.0, gain_se=0.005), "math": _state(0.25, 2.02, gain_se=0.005)}
    selection = build_selection(round_index=1, weights=EQUAL, cfg=cfg, states=states, budget=16000)
    weights = selection["category_weights"]
    assert weights["instructions"] > 0.25 and weights["chat"] < 0.25
    assert schema_errors(selection, "selection.schema.json") == []
    with pytest.raises(ValueError, match="'worst' needs"):
        build_selection(round_index=1, weights=EQUAL, cfg=cfg, budget=16000)
