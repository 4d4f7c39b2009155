"""Near-dup quality (pairwise P/R/F1 on a labelled set built from real records) and MinHash speed at scale.

Run:
  .venv/bin/python bench/dedup_speed_quality.py quality          # labelled set, MinHash + semantic step
  .venv/bin/python bench/dedup_speed_quality.py speed [N]        # N docs of ~200 words (default 100000)

Quality set: distinct real records (gsm8k train question+answer, self-instruct user-oriented
instruction+instances, LLaMA-Factory alpaca demo, CodeAlpaca 2k; the last two are test-only data, read
here, never copied) are the negatives; a seeded 25% of them get one planted near copy each (greeting
added, typos, sentences reordered, whitespace/case changed, a sentence appended): the positives.
The HumanEval paraphrases of ../shared/data/neardup are hard positives, reported separately.
Speed set: docs of ~200 words made of randomly drawn real sentences of the same sources, 10% with a
planted near copy; our step (map per 8192-row batch + reduce, exact-Jaccard verified) vs rensa and a
plain datasketch loop (the latter on a subset, extrapolated), all in the same process and run.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import polars as pl
import rensa
from datasketch import MinHash, MinHashLSH
from rich.console import Console
from rich.progress import track
from rich.table import Table

from curator.config import MinHashConfig, SemanticDedupConfig
from curator.record import make_record, to_table
from curator.steps.dedup import MinHashDedup

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
BATCH = 8192
console = Console()


def real_texts() -> list[tuple[str, str]]:
    """(source, text) of distinct real records: exact duplicates after whitespace/case folding removed."""
    out: list[tuple[str, str]] = []
    for line in (SHARED / "instruct" / "gsm8k_train.jsonl").read_text(encoding="utf-8").split("\n"):
        if line.strip():
            r = json.loads(line)
            out.append(("gsm8k", r["question"] + "\n" + r["answer"]))
    for line in (SHARED / "instruct" / "self_instruct_user_oriented_instructions.jsonl").read_text().split("\n"):
        if line.strip():
            r = json.loads(line)
            inst = "\n".join(f"{i.get('input', '')}\n{i.get('output', '')}" for i in r["instances"])
            out.append(("self_instruct", r["instruction"] + "\n" + inst))
    for name, src in (("llamafactory_alpaca_en_demo.json", "alpaca_demo"), ("code_alpaca_2k.json", "code_alpaca")):
        for r in json.loads((SHARED / "instruct" / name).read_text(encoding="utf-8")):
            out.append((src, "\n".join(x for x in (r["instruction"], r["input"], r["output"]) if x)))
    seen: set[str] = set()
    distinct = []
    for src, t in out:
        key = " ".join(t.lower().split())
        if key not in seen:
            seen.add(key)
            distinct.append((src, t))
    return distinct


def frame(texts: list[str]) -> pl.DataFrame:
    """Canonical one-turn records as a batch with `row` and a zero-padded `id` equal to the row."""
    recs = [
        make_record([{"role": "user", "content": t}], source={"file": "b", "index": i, "format": "b"})
        for i, t in enumerate(texts)
    ]
    df = pl.from_arrow(to_table(recs)).with_row_index("row").with_columns(pl.col("row").cast(pl.Int64))
    return df.with_columns(pl.col("row").map_elements(lambda r: f"{r:024x}", return_dtype=pl.String).alias("id"))


def _typos(text: str, rng: random.Random) -> str:
    chars = list(text)
    letters = [i for i, c in enumerate(chars) if c.isalpha()]
    for i in rng.sample(letters, min(len(letters), max(1, len(text.split()) // 40))):
        chars[i] = rng.choice("abcdefghijklmnopqrstuvwxyz")
    return "".join(chars)


def _reorder(text: str, rng: random.Random) -> str:
    sents = re.split(r"(?<=[.!?\n])\s+", text)
    if len(sents) < 3:
        return text + " "  # nothing to swap: keep it a whitespace edit
    i = rng.randrange(len(sents) - 1)
    sents[i], sents[i + 1] = sents[i + 1], sents[i]
    return " ".join(sents)


EDITS: dict[str, Callable[[str, random.Random], str]] = {
    "greeting": lambda t, rng: rng.choice(["Hi! ", "Hello there, ", "Hey, quick question: "]) + t,
    "typos": _typos,
    "reorder": _reorder,
    "ws_case": lambda t, rng: re.sub(r" ", "  ", t.upper() if rng.random() < 0.5 else t.lower(), count=5),
    "append": lambda t, rng: t + rng.choice([" Thanks in advance!", " Please explain step by step.", " Be concise."]),
}


def pairwise_prf(pred: list[str], truth: list[int]) -> tuple[float, float, float, int, int, int]:
    """Pairwise precision/recall/F1 of predicted clusters (labels) against true clusters."""

    def pairs(labels: list) -> set[tuple[int, int]]:
        groups: dict = {}
        for i, g in enumerate(labels):
            groups.setdefault(g, []).append(i)
        return {p for members in groups.values() for p in itertools.combinations(members, 2)}

    p_pairs, t_pairs = pairs(pred), pairs(truth)
    tp = len(p_pairs & t_pairs)
    prec = tp / len(p_pairs) if p_pairs else 1.0
    rec = tp / len(t_pairs) if t_pairs else 1.0
    f1 = 2 * prec * rec / (prec + rec) if prec + rec else 0.0
    return prec, rec, f1, tp, len(p_pairs), len(t_pairs)


def run_step(step: object, df: pl.DataFrame) -> pl.DataFrame:
    parts = [step.map(df.slice(o, BATCH)) for o in range(0, df.height, BATCH)]  # type: ignore[attr-defined]
    return df.select("row").join(step.reduce(parts), on="row", how="left").sort("row")  # type: ignore[attr-defined]


def quality() -> None:
    """Labelled lexical set: P/R/F1 per threshold and recall per edit; HumanEval paraphrases separately."""
    rng = random.Random(0)
    base = real_texts()
    texts = [t for _, t in base]
    truth = list(range(len(texts)))
    kinds = ["none"] * len(texts)
    for i in sorted(rng.sample(range(len(base)), len(base) // 4)):
        kind = rng.choice(sorted(EDITS))
        texts.append(EDITS[kind](base[i][1], rng))
        truth.append(i)
        kinds.append(kind)
    df = frame(texts)
    console.print(f"labelled set: {len(base)} distinct real records + {len(texts) - len(base)} planted near copies")
    table = Table(title="Near-dup quality (pairwise over clusters), word 3-grams, 128 perms")
    for c in ("set", "method", "threshold", "precision", "recall", "F1", "TP", "pred pairs", "true pairs"):
        table.add_column(c)
    fps: list[tuple[int, int, float]] = []
    for thr in (0.7, 0.8):
        out = run_step(MinHashDedup(MinHashConfig(threshold=thr)), df)
        p, r, f, tp, npred, ntrue = pairwise_prf(out["near_cluster_id"].to_list(), truth)
        table.add_row(
            "lexical", "MinHash+verify", f"{thr}", f"{p:.3f}", f"{r:.3f}", f"{f:.3f}", str(tp), str(npred), str(ntrue)
        )
        if thr == 0.8:
            labels = out["near_cluster_id"].to_list()
            by_kind: dict[str, list[int]] = {}
            for k in range(len(base), len(texts)):
                by_kind.setdefault(kinds[k], []).append(int(labels[k] == labels[truth[k]]))
            jac = out["near_jaccard"].to_list()
            fps = [
                (k, int(out["near_dup_of"][k], 16), jac[k])
                for k in range(len(texts))
                if out["near_dup_of"][k] is not None and truth[k] != truth[int(out["near_dup_of"][k], 16)]
            ]
    he = [
        json.loads(x)["text"]
        for x in (SHARED / "neardup" / "HumanEval_original.jsonl").read_text().split("\n")
        if x.strip()
    ]
    hp = [
        json.loads(x)["text"]
        for x in (SHARED / "neardup" / "humaneval_python.jsonl").read_text().split("\n")
        if x.strip()
    ]
    hdf = frame(he + hp)
    htruth = list(range(len(he))) + list(range(len(hp)))
    for thr in (0.5, 0.8):
        out = run_step(MinHashDedup(MinHashConfig(threshold=thr)), hdf)
        p, r, f, tp, npred, ntrue = pairwise_prf(out["near_cluster_id"].to_list(), htruth)
        table.add_row(
            "HumanEval paraphrase",
            "MinHash+verify",
            f"{thr}",
            f"{p:.3f}",
            f"{r:.3f}",
            f"{f:.3f}",
            str(tp),
            str(npred),
            str(ntrue),
        )
    from curator.steps.semantic import SemanticDedup

    sem = SemanticDedup(SemanticDedupConfig(enabled=True, threshold=0.9))
    sem_parts = [sem.map(hdf.slice(o, BATCH)) for o in range(0, hdf.height, BATCH)]  # embed once
    for thr in (0.8, 0.85, 0.9, 0.95):
        sem.cfg = SemanticDedupConfig(enabled=True, threshold=thr)
        out = hdf.select("row").join(sem.reduce(sem_parts), on="row", how="left").sort("row")
        p, r, f, tp, npred, ntrue = pairwise_prf(out["sem_cluster_id"].to_list(), htruth)
        table.add_row(
            "HumanEval paraphrase",
            "semantic (MiniLM)",
            f"{thr}",
            f"{p:.3f}",
            f"{r:.3f}",
            f"{f:.3f}",
            str(tp),
            str(npred),
            str(ntrue),
        )
    console.print(table)
    console.print(
        "recall of planted copies by edit at threshold 0.8: "
        + ", ".join(f"{k} {sum(v)}/{len(v)}" for k, v in sorted(by_kind.items()))
    )
    console.print(f"false-positive links at 0.8 (row, linked to, Jaccard): {fps[:10]}")
    for k, rep, j in fps[:5]:
        console.print(
            f"  row {k} ({base[truth[k]][0]}) ~ row {rep} ({base[truth[rep]][0]}) J={j}: "
            f"{texts[k][:80]!r} | {texts[rep][:80]!r}"
        )


def speed_docs(n: int, rng: random.Random) -> list[str]:
    """n docs of ~200 words from randomly drawn real sentences; the last 10% are near copies of others."""
    sents = [s for _, t in real_texts() for s in re.split(r"(?<=[.!?\n])\s+", t) if len(s.split()) >= 4]
    n_base = n - n // 10
    docs = []
    for _ in track(range(n_base), description="building docs", console=console):
        words: list[str] = []
        while len(words) < 200:
            words.extend(rng.choice(sents).split())
        docs.append(" ".join(words[:200]))
    kinds = sorted(EDITS)
    for i in rng.sample(range(n_base), n - n_base):
        docs.append(EDITS[rng.choice(kinds)](docs[i], rng))
    return docs


def _word_3grams(text: str) -> list[str]:
    w = text.lower().split()
    return [" ".join(w[k : k + 3]) for k in range(len(w) - 2)]


def speed(n: int) -> None:
    """Signatures + LSH on n docs: our step, rensa and datasketch (subset), measured in one run."""
    rng = random.Random(1)
    docs = speed_docs(n, rng)
    df = frame(docs)
    rows: list[tuple[str, int, float, str]] = []
    cfg = MinHashConfig(threshold=0.8)

    step = MinHashDedup(cfg)
    t0 = time.perf_counter()
    parts = [
        step.map(df.slice(o, BATCH)) for o in track(range(0, df.height, BATCH), description="ours", console=console)
    ]
    t_map = time.perf_counter() - t0
    out = step.reduce(parts)
    t_all = time.perf_counter() - t0
    dups = int(out["near_dup_of"].is_not_null().sum())
    rows.append(("sft-curator map (signatures + band keys + spill)", n, t_map, ""))
    rows.append(("sft-curator map + reduce (candidates, exact Jaccard, clusters)", n, t_all, f"{dups} dups"))

    t0 = time.perf_counter()
    lsh = rensa.RMinHashLSH(threshold=0.8, num_perm=128, num_bands=16)  # must divide num_perm
    for i, t in enumerate(track(docs, description="rensa", console=console)):
        mh = rensa.RMinHash(num_perm=128, seed=1)
        mh.update(_word_3grams(t))
        lsh.insert(i, mh)
    rows.append(("rensa RMinHash + RMinHashLSH.insert per doc (Python 3-grams)", n, time.perf_counter() - t0, ""))

    m = min(n, 5000)
    t0 = time.perf_counter()
    dlsh = MinHashLSH(threshold=0.8, num_perm=128)
    for i, t in enumerate(docs[:m]):
        mh = MinHash(num_perm=128, seed=1)
        mh.update_batch([g.encode() for g in _word_3grams(t)])
        dlsh.insert(i, mh)
    rows.append(
        (f"datasketch MinHash + MinHashLSH.insert per doc (first {m}, extrapolated)", m, time.perf_counter() - t0, "")
    )

    table = Table(
        title=f"MinHash signatures + LSH, {n} docs of ~200 words "
        f"(POLARS_MAX_THREADS={os.environ.get('POLARS_MAX_THREADS', 'all')})"
    )
    for c in ("implementation", "docs timed", "seconds", "docs/s", "note"):
        table.add_column(c)
    for name, k, s, note in rows:
        table.add_row(name, str(k), f"{s:.1f}", f"{k / s:,.0f}", note)
    console.print(table)
    console.print(f"load average at end: {os.getloadavg()}")


if __name__ == "__main__":
    mode = sys.argv[1] if len(sys.argv) > 1 else "quality"
    if mode == "quality":
        quality()
    else:
        speed(int(sys.argv[2]) if len(sys.argv) > 2 else 100_000)
