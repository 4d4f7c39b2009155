"""Feedback: category weights move toward what training helped least; examples by IFD and loss."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

from curator.record import schema_errors
from curator.select.feedback import FeedbackConfig, build_selection, category_update, example_weights, write_selection
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
                                scores=_scores(), cfg=FeedbackConfig())
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
