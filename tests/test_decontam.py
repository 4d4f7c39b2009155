"""Decontamination against real benchmarks: n-gram hits name the item; paraphrases need the semantic check."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest
from test_dedup import records_frame

from curator.config import BenchmarkSpec, DecontamConfig
from curator.steps.decontam import BenchmarkError, Decontaminate, prose_part, semantic_views

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


def test_semantic_views_window_long_texts_and_pull_out_code_prose() -> None:
    code = (
        'def f(x):\n    """Return the sum of the squares of x."""\n'
        "    # add them up\n    return sum(v * v for v in x)"
    )
    views = semantic_views(code, window=64, prose=True)
    assert views == [code, "Return the sum of the squares of x. add them up"]
    assert prose_part("x = 1  # t\ny = 2") == "t"
    long = " ".join(f"w{i}" for i in range(100))
    windows = semantic_views(long, window=40, prose=True)[1:]
    assert [w.split()[0] for w in windows] == ["w0", "w20", "w40", "w60"]
    assert windows[-1].split()[-1] == "w99"  # the tail is covered
    assert semantic_views(long, window=0, prose=False) == [long]
    assert semantic_views("   ", window=8, prose=True) == []


@pytest.mark.slow
def test_semantic_check_flags_humaneval_paraphrases_with_the_right_item(shared_data: Path, tmp_path: Path) -> None:
    """Line-aligned paraphrases share few 13-grams; at the default semantic settings most are caught."""
    orig = (shared_data / "neardup" / "HumanEval_original.jsonl").read_text(encoding="utf-8").split("\n")[:30]
    bench = tmp_path / "he30.jsonl"
    bench.write_text("\n".join(orig), encoding="utf-8")
    para = jsonl(shared_data / "neardup" / "humaneval_python.jsonl")[:12]
    spec = BenchmarkSpec(name="humaneval", path=str(bench), fields=["text"])
    plain = Decontaminate(DecontamConfig(benchmarks=[spec]))
    sem = Decontaminate(DecontamConfig(benchmarks=[spec], semantic=True))
    pairs = [("Write this function.", p["text"]) for p in para]
    df = records_frame([*pairs, ("What is the capital of France?", "Paris is the capital of France.")])
    with_sem = sem(df)
    # item 4 (mean_absolute_deviation) is fully reworded: names, docstring and code differ
    assert with_sem.row(4, named=True)["contam_item"] == "4"
    assert with_sem["contam_method"][4] == "semantic" and with_sem["contam_side"][4] == "answer"
    right = with_sem.head(12)["contam_item"] == pl.Series([str(i) for i in range(12)])
    assert right.sum() >= 8  # measured 8/12 at the defaults (0.8, 64-word windows, prose view)
    assert with_sem.head(12).filter(~right.fill_null(True)).is_empty()  # a flag never names the wrong item
    assert with_sem["contam_benchmark"][12] is None
    assert plain(df)["contam_benchmark"].is_not_null().sum() < right.sum()
