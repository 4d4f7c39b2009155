"""Decontamination: recall on HumanEval paraphrases (semantic check on/off) and false positives on gsm8k.

Run: .venv/bin/python bench/decontam_bench.py [N_SEMANTIC_FPR]   (default 1000 gsm8k-train records for the
semantic false-positive check; the n-gram check always runs on all 7473).

- Recall: benchmark = ../shared/data/neardup/HumanEval_original.jsonl (164 items, field `text`); records =
  the 164 line-aligned paraphrases of humaneval_python.jsonl as the assistant turn of a one-line prompt.
  A hit counts only when it names the paraphrased item (the same line index).
- False positives: records = gsm8k train (question as user, answer as assistant), benchmark = gsm8k test
  questions. The train set is clean of test items by exact match, so every flag is a false positive
  unless inspection shows otherwise; flags are printed for inspection.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import polars as pl
from rich.console import Console
from rich.table import Table

from curator.config import BenchmarkSpec, DecontamConfig
from curator.record import make_record, to_table
from curator.steps.decontam import Decontaminate

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
console = Console()


def jsonl(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text(encoding="utf-8").split("\n") if x.strip()]


def records(pairs: list[tuple[str, str]]) -> pl.DataFrame:
    recs = [
        make_record(
            [{"role": "user", "content": u}, {"role": "assistant", "content": a}],
            source={"file": "b", "index": i, "format": "b"},
        )
        for i, (u, a) in enumerate(pairs)
    ]
    return pl.from_arrow(to_table(recs))


def run(step: Decontaminate, df: pl.DataFrame, batch: int = 2048) -> pl.DataFrame:
    return pl.concat([step(df.slice(o, batch)) for o in range(0, df.height, batch)])


def main(n_sem: int) -> None:
    table = Table(title="Decontamination (13-gram + optional MiniLM cosine), 2026-11-22")
    for c in ("check", "records", "semantic", "flagged", "right item", "rate", "seconds"):
        table.add_column(c)

    he_spec = BenchmarkSpec(
        name="humaneval", path=str(SHARED / "neardup" / "HumanEval_original.jsonl"), fields=["text"]
    )
    para = jsonl(SHARED / "neardup" / "humaneval_python.jsonl")
    he_df = records([("Complete the following Python function.", p["text"]) for p in para])
    expect = pl.Series([str(i) for i in range(len(para))])
    for sem, thr in ((False, None), (True, 0.75), (True, 0.8), (True, 0.9)):
        cfg = DecontamConfig(benchmarks=[he_spec], semantic=sem, semantic_threshold=thr or 0.9)
        t0 = time.perf_counter()
        out = run(Decontaminate(cfg), he_df)
        dt = time.perf_counter() - t0
        flagged = int(out["contam_item"].is_not_null().sum())
        right = int((out["contam_item"] == expect).fill_null(False).sum())
        label = f"on @ {thr}" if sem else "off"
        table.add_row(
            "HumanEval paraphrase recall",
            str(len(para)),
            label,
            str(flagged),
            str(right),
            f"{right / len(para):.3f}",
            f"{dt:.1f}",
        )
        if sem and thr == 0.9:
            by = out.filter(pl.col("contam_item") == expect)["contam_method"].value_counts().sort("contam_method")
            console.print(f"HumanEval @0.9, hits by method: {dict(by.iter_rows())}")

    gsm_spec = BenchmarkSpec(name="gsm8k", path=str(SHARED / "benchmarks" / "gsm8k_test.jsonl"), fields=["question"])
    train = jsonl(SHARED / "instruct" / "gsm8k_train.jsonl")
    test = jsonl(SHARED / "benchmarks" / "gsm8k_test.jsonl")
    test_norm = {" ".join(r["question"].lower().split()) for r in test}
    exact = sum(" ".join(r["question"].lower().split()) in test_norm for r in train)
    console.print(f"gsm8k train questions equal to a test question (case/space folded): {exact}")
    gdf = records([(r["question"], r["answer"]) for r in train])
    for sem, n in ((False, len(train)), (True, n_sem)):
        cfg = DecontamConfig(benchmarks=[gsm_spec], semantic=sem, semantic_threshold=0.9)
        t0 = time.perf_counter()
        out = run(Decontaminate(cfg), gdf.head(n))
        dt = time.perf_counter() - t0
        hits = out.with_row_index("i").filter(pl.col("contam_item").is_not_null())
        table.add_row(
            "gsm8k train vs test false positives",
            str(n),
            "on @ 0.9" if sem else "off",
            str(hits.height),
            "-",
            f"{hits.height / n:.4f}",
            f"{dt:.1f}",
        )
        for i, item, side, method, score in hits.select(
            "i", "contam_item", "contam_side", "contam_method", "contam_score"
        ).iter_rows():
            console.print(
                f"[{'sem' if sem else 'ngram'}] train {i} ({side}, {method}, score {score:.3f}) ~ test {item}:\n"
                f"   train: {train[i]['question'][:160]!r}\n   test:  {test[int(item)]['question'][:160]!r}"
            )
    console.print(table)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 1000)
