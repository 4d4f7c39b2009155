"""Decontamination: flag records that share a long n-gram (or, optionally, a paraphrase) with a benchmark.

A `MapStep` whose benchmark index is built once at construction: every item's word 13-grams (after
lowercasing, dropping punctuation and collapsing whitespace, as in the GPT-3 decontamination) are
hashed into a Polars frame; a batch's prompt and answer n-grams are hashed the same way and joined
against it. Items shorter than `ngram` words match as a whole when they have at least
`min_item_words` words (shorter ones are too generic and are counted in `skipped_items`).
With `semantic: true`, prompt and answer are also embedded (see `curator.steps.semantic`) and
flagged when their cosine to an item reaches `semantic_threshold`: this catches paraphrases.

Columns: `contam_benchmark`, `contam_item` (the item id), `contam_side` (prompt/answer),
`contam_method` (ngram/semantic), `contam_ngram` (a short hash of the shared n-gram: record text
may carry PII, the item id is what a reviewer needs), `contam_score` (n-gram hits, or cosine).
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from curator.config import BenchmarkSpec, DecontamConfig
from curator.steps.base import Rule
from curator.steps.text import normalize_expr, shingle_hashes, view_expr

SIDES = ("prompt", "answer")
OUT_SCHEMA = {
    "contam_benchmark": pl.String,
    "contam_item": pl.String,
    "contam_side": pl.String,
    "contam_method": pl.String,
    "contam_ngram": pl.String,
    "contam_score": pl.Float64,
}


class BenchmarkError(ValueError):
    """A benchmark file that cannot be read or lacks the configured fields; the message says which."""


def _read_rows(path: Path) -> list[dict[str, Any]]:
    """Rows of a JSONL, JSON (array), CSV or Parquet file, optionally gzipped."""
    name = path.name.lower().removesuffix(".gz")
    if name.endswith((".csv", ".parquet")):
        frame = pl.read_csv(path, infer_schema=False) if name.endswith(".csv") else pl.read_parquet(path)
        return frame.to_dicts()
    raw = gzip.decompress(path.read_bytes()) if path.name.lower().endswith(".gz") else path.read_bytes()
    text = raw.decode("utf-8-sig")
    if name.endswith(".jsonl"):
        # split on \n only: benchmark text may hold raw U+2028, which str.splitlines() would cut
        return [json.loads(line) for line in text.split("\n") if line.strip()]
    data = json.loads(text)
    return data if isinstance(data, list) else next(v for v in data.values() if isinstance(v, list))


def load_benchmark(spec: BenchmarkSpec) -> pl.DataFrame:
    """One benchmark as `item_id`, `text` (its configured fields joined), in file order."""
    path = Path(spec.path)
    try:
        rows = _read_rows(path)
    except (OSError, ValueError, StopIteration, pl.exceptions.PolarsError) as exc:
        raise BenchmarkError(
            f"decontam.benchmarks[{spec.name}]: cannot read {path} ({exc}); "
            "give a JSONL, JSON array, CSV or Parquet file"
        ) from exc
    seen = set().union(*(r.keys() for r in rows[:100])) if rows else set()
    if rows and not seen.intersection(spec.fields):
        raise BenchmarkError(
            f"decontam.benchmarks[{spec.name}]: none of fields {spec.fields} in {path}; available: {sorted(seen)[:20]}"
        )
    ids, texts = [], []
    for pos, row in enumerate(rows):
        ids.append(str(row.get(spec.id_field, pos)) if spec.id_field else str(pos))
        texts.append("\n".join(str(row[f]) for f in spec.fields if row.get(f) not in (None, "")))
    return pl.DataFrame({"item_id": ids, "text": texts}, schema={"item_id": pl.String, "text": pl.String})


def _norm(text: pl.Expr) -> pl.Expr:
    return normalize_expr(text, lowercase=True, collapse_whitespace=True, strip_punctuation=True)


class Decontaminate:
    """Flags records sharing an n-gram (or a close paraphrase) with a benchmark item; rule `contaminated`."""

    name = "decontaminate"
    only_kept = True

    def __init__(self, cfg: DecontamConfig) -> None:
        self.cfg = cfg
        items = [load_benchmark(spec).with_columns(pl.lit(spec.name).alias("benchmark")) for spec in cfg.benchmarks]
        self.items = (
            pl.concat(items)
            if items
            else pl.DataFrame(schema={"item_id": pl.String, "text": pl.String, "benchmark": pl.String})
        )
        norm = self.items.select(_norm(pl.col("text")).alias("t"))["t"]
        words = norm.str.count_matches(r"\S+")
        self.skipped_items = int(((words < cfg.min_item_words) & (words < cfg.ngram)).sum())
        frames = []
        # one index per n-gram length: full n-grams, and whole short items by their own length
        self.lengths = sorted({cfg.ngram} | {int(w) for w in words.unique() if cfg.min_item_words <= w < cfg.ngram})
        for n in self.lengths:
            sel = (words >= n) if n == cfg.ngram else (words == n)
            idx = np.flatnonzero(sel.to_numpy())
            sh = shingle_hashes(norm.gather(idx), kind="word", n=n)
            frames.append(
                sh.with_columns(pl.Series("item", idx, dtype=pl.UInt32).gather(sh["idx"]), pl.lit(n).alias("n"))
            )
        self.index = pl.concat(frames).select("h", "item", "n").unique(["h", "n"], keep="first", maintain_order=True)
        self._item_emb: np.ndarray | None = None
        if cfg.semantic and self.items.height:
            from curator.steps.semantic import embed

            self._item_emb = embed(self.items["text"].to_list(), model=cfg.model, batch_size=cfg.batch_size)

    def _ngram_hits(self, batch: pl.DataFrame) -> pl.DataFrame:
        hits = []
        for side in SIDES:
            texts = batch.select(_norm(view_expr(side)))[f"{side}_text"]
            for n in self.lengths:
                sh = shingle_hashes(texts, kind="word", n=n).with_columns(pl.lit(n).alias("n"))
                joined = sh.join(self.index, on=["h", "n"], how="inner")
                hits.append(joined.with_columns(pl.lit(side).alias("side")))
        found = pl.concat(hits)
        return (
            found.group_by("idx", "side", "item")
            .agg(pl.col("h").n_unique().alias("score"), pl.col("h").min())
            .with_columns(pl.lit("ngram").alias("method"), pl.col("score").cast(pl.Float64))
        )

    def _semantic_hits(self, batch: pl.DataFrame) -> pl.DataFrame:
        from curator.steps.semantic import cosine_pairs, embed

        assert self._item_emb is not None
        hits = []
        for side in SIDES:
            texts = batch.select(view_expr(side))[f"{side}_text"].to_list()
            usable = [i for i, t in enumerate(texts) if t.strip()]
            vecs = embed([texts[i] for i in usable], model=self.cfg.model, batch_size=self.cfg.batch_size)
            i, j, s = cosine_pairs(vecs, self.cfg.semantic_threshold, other=self._item_emb)
            hits.append(
                pl.DataFrame(
                    {
                        "idx": np.asarray(usable, dtype=np.uint32)[i],
                        "item": j.astype(np.uint32),
                        "score": s.astype(np.float64),
                    },
                    schema={"idx": pl.UInt32, "item": pl.UInt32, "score": pl.Float64},
                ).with_columns(
                    pl.lit(side).alias("side"), pl.lit("semantic").alias("method"), pl.lit(None, pl.UInt64).alias("h")
                )
            )
        return pl.concat(hits)

    def __call__(self, batch: pl.DataFrame) -> pl.DataFrame:
        """The batch with the `contam_*` columns (null when clean)."""
        if self.index.is_empty() or batch.is_empty():
            return batch.with_columns(*[pl.lit(None, dtype=t).alias(c) for c, t in OUT_SCHEMA.items()])
        hits = [self._ngram_hits(batch)]
        if self._item_emb is not None:
            hits.append(self._semantic_hits(batch))
        cols = ["idx", "side", "item", "score", "h", "method"]
        best = (
            pl.concat([h.select(cols) for h in hits], how="vertical_relaxed")
            # n-gram evidence first, then the strongest, then a stable order
            .sort(["idx", "method", "score", "side", "item"], descending=[False, False, True, True, False])
            .unique("idx", keep="first", maintain_order=True)
        )
        meta = self.items.select("benchmark", "item_id").with_row_index("item")
        best = best.join(meta, on="item", how="left").select(
            "idx",
            pl.col("benchmark").alias("contam_benchmark"),
            pl.col("item_id").alias("contam_item"),
            pl.col("side").alias("contam_side"),
            pl.col("method").alias("contam_method"),
            pl.col("h").map_elements(lambda h: f"{h:016x}"[:12], return_dtype=pl.String).alias("contam_ngram"),
            pl.col("score").alias("contam_score"),
        )
        out = batch.with_row_index("idx").join(best, on="idx", how="left").sort("idx").drop("idx")
        return out.with_columns(*[pl.col(c).cast(t) for c, t in OUT_SCHEMA.items()])

    def rules(self) -> list[Rule]:
        detail = pl.concat_str([pl.col("contam_benchmark"), pl.col("contam_item")], separator=":")
        return [Rule("contaminated", pl.col("contam_benchmark").is_not_null(), detail=detail)]
