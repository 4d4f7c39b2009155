"""Decontamination against real benchmarks: n-gram hits name the item; paraphrases need the semantic check."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest
from test_dedup import records_frame

from curator.config import BenchmarkSpec, DecontamConfig
from curator.steps.decontam import BenchmarkError, Decontaminate

pytestmark = pytest.mark.shared


def jsonl(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text(encoding="utf-8").split("\n") if x.strip()]


def test_ngram_flags_benchmark_items_with_their_id(shared_data: Path) -> None:
    bench = shared_data / "benchmarks"
    cfg = DecontamConfig(
        benchmarks=[
            BenchmarkSpec(name="gsm8k", path=str(bench / "gsm8k_test.jsonl"), fields=["question"]),
            BenchmarkSpec(
                name="humaneval", path=str(bench / "HumanEval.jsonl.gz"), fields=["prompt"], id_field="task_id"
            ),
        ]
    )
    step = Decontaminate(cfg)
    test = jsonl(bench / "gsm8k_test.jsonl")[:30]
    train = jsonl(shared_data / "instruct" / "gsm8k_train.jsonl")[:300]
    pairs = [("Solve this: " + r["question"], "Let me think.") for r in test]
    pairs += [(r["question"], r["answer"]) for r in train]
    pairs += [("", ""), ("😀", "ok")]
    out = step(records_frame(pairs))
    assert out.height == len(pairs)
    flagged = out.head(30)
    assert flagged["contam_item"].to_list() == [str(i) for i in range(30)]
    assert (flagged["contam_benchmark"] == "gsm8k").all() and (flagged["contam_side"] == "prompt").all()
    assert flagged["contam_ngram"].str.len_chars().max() == 12
    false_pos = out.slice(30, 300)["contam_benchmark"].is_not_null().sum()
    assert false_pos <= 3  # train is clean of test items by exact match; shared stock phrases are rare
    assert out.tail(2)["contam_benchmark"].is_null().all()
    rule = step.rules()[0]
    assert rule.reason == "contaminated"
    assert out.select(rule.detail)[:1].item() == "gsm8k:0"


def test_bad_benchmark_fields_name_the_file_and_columns(shared_data: Path) -> None:
    spec = BenchmarkSpec(name="tqa", path=str(shared_data / "benchmarks" / "TruthfulQA.csv"), fields=["prompt"])
    with pytest.raises(BenchmarkError, match=r"available: .*Question"):
        Decontaminate(DecontamConfig(benchmarks=[spec]))


def test_short_items_match_whole_and_csv_ids(shared_data: Path) -> None:
    spec = BenchmarkSpec(name="tqa", path=str(shared_data / "benchmarks" / "TruthfulQA.csv"), fields=["Question"])
    step = Decontaminate(DecontamConfig(benchmarks=[spec]))
    rows = pl.read_csv(spec.path, infer_schema=False)
    q = rows["Question"][0]
    out = step(records_frame([(f"Quick one. {q} Thanks!", "No idea."), ("What is the capital of France?", "Paris")]))
    assert out["contam_item"][0] == "0" and out["contam_benchmark"][0] == "tqa"
    assert out["contam_benchmark"][1] is None


@pytest.mark.slow
def test_semantic_check_catches_humaneval_paraphrases(shared_data: Path, tmp_path: Path) -> None:
    """Line-aligned paraphrases share few 13-grams; the embedding check finds most of them."""
    orig = (shared_data / "neardup" / "HumanEval_original.jsonl").read_text(encoding="utf-8").split("\n")[:30]
    bench = tmp_path / "he30.jsonl"
    bench.write_text("\n".join(orig), encoding="utf-8")
    para = jsonl(shared_data / "neardup" / "humaneval_python.jsonl")[:12]
    spec = BenchmarkSpec(name="humaneval", path=str(bench), fields=["text"])
    plain = Decontaminate(DecontamConfig(benchmarks=[spec]))
    sem = Decontaminate(DecontamConfig(benchmarks=[spec], semantic=True, semantic_threshold=0.75))
    df = records_frame([("Write this function.", p["text"]) for p in para])
    with_sem = sem(df)
    right = with_sem["contam_item"] == pl.Series([str(i) for i in range(12)])
    assert right.sum() >= 8  # measured 8/12 at 0.75; a flag never names the wrong item
    assert with_sem.filter(~right.fill_null(True)).is_empty()
    assert plain(df)["contam_benchmark"].is_not_null().sum() < right.sum()
