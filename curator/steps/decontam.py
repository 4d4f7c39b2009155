"""Decontamination: flag records that share a long n-gram (or, optionally, a paraphrase) with a benchmark.

A `MapStep` whose benchmark index is built once at construction: every item's word 13-grams (after
lowercasing, dropping punctuation and collapsing whitespace, as in the GPT-3 decontamination) are
hashed into a Polars frame; a batch's prompt and answer n-grams are hashed the same way and joined
against it. Items shorter than `ngram` words match as a whole when they have at least
`min_item_words` words (shorter ones are too generic and are counted in `skipped_items`).
With `semantic: true`, prompt and answer are also embedded (see `curator.steps.semantic`) and
flagged when their cosine to an item reaches `semantic_threshold`: this catches paraphrases.

The semantic check compares *views*, not whole texts, and scores a (record, item) pair by the max
cosine over view pairs ("chunked embeddings"). Why: all-MiniLM-L6-v2 reads only 256 word pieces,
so one embedding of a long item says nothing about its tail, and a paraphrase that rewrites names
and code around a task description keeps its meaning in parts, not in the whole. A text's views
are (1) the whole text (what the model sees of it), (2) windows of `semantic_window` words with
half-window overlap when the text is longer than one window (a window is long enough that generic
stock sentences alone do not match), and (3) with `semantic_prose`, its natural-language part
(docstrings and `#` comments) when it has one: code paraphrases rename identifiers and restructure
the code, but the task description keeps its meaning. Item views are embedded once per step
instance; record views of a batch in one `encode` call. Only each record's best item is kept, so
memory is O(record views x item views) per block, never all pairs.

Columns: `contam_benchmark`, `contam_item` (the item id), `contam_side` (prompt/answer),
`contam_method` (ngram/semantic), `contam_ngram` (a short hash of the shared n-gram: record text
may carry PII, the item id is what a reviewer needs), `contam_score` (n-gram hits, or cosine).
"""

from __future__ import annotations

import gzip
import json
import re
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


# Docstrings and comments: the natural-language part of code (view 3 of the module docstring).
_PROSE = re.compile(r'"""(.*?)"""|\'\'\'(.*?)\'\'\'|#[ \t]?([^\n]*)', re.S)
_VIEW_BLOCK = 2048


def prose_part(text: str) -> str:
    """Docstrings and `#` comments of a code text joined, whitespace-collapsed; "" when there are none."""
    parts = (next(g for g in m.groups() if g is not None) for m in _PROSE.finditer(text))
    return " ".join(" ".join(parts).split())


def semantic_views(text: str, *, window: int, prose: bool, max_chars: int = 2000) -> list[str]:
    """The texts embedded for one record side or item: whole text, word windows, prose part (deduplicated)."""
    views = [text[:max_chars]]
    words = text.split()
    if window and len(words) > window:
        stride = max(1, window // 2)
        views += [" ".join(words[i : i + window]) for i in range(0, len(words) - window + stride, stride)]
    if prose and (nl := prose_part(text)) and len(nl.split()) >= 4:
        views.append(nl[:max_chars])
    return list(dict.fromkeys(v for v in views if v.strip()))


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
            emb, owner = self._embed_views(self.items["text"].to_list())
            self._item_emb = emb if len(emb) else None
            self._item_starts = np.flatnonzero(np.r_[True, owner[1:] != owner[:-1]])
            self._item_of_group = owner[self._item_starts]

    def _embed_views(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Embeddings of every view of `texts` and, per view, the position of its text (ascending)."""
        from curator.steps.semantic import embed

        views = [semantic_views(t, window=self.cfg.semantic_window, prose=self.cfg.semantic_prose) for t in texts]
        owner = np.repeat(np.arange(len(texts), dtype=np.int64), [len(v) for v in views])
        flat = [v for vs in views for v in vs]
        return embed(flat, model=self.cfg.model, batch_size=self.cfg.batch_size), owner

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
        """Per record side, the item with the highest view-pair cosine, kept when >= the threshold."""
        assert self._item_emb is not None
        hits = []
        for side in SIDES:
            texts = batch.select(view_expr(side))[f"{side}_text"].to_list()
            usable = [i for i, t in enumerate(texts) if t.strip()]
            vecs, owner = self._embed_views([texts[i] for i in usable])
            js, ss = [], []
            for lo in range(0, len(vecs), _VIEW_BLOCK):
                # max over each item's views, then each record view's best item (lowest index on ties)
                sims = vecs[lo : lo + _VIEW_BLOCK] @ self._item_emb.T
                per_item = np.maximum.reduceat(sims, self._item_starts, axis=1)
                js.append(per_item.argmax(axis=1))
                ss.append(per_item.max(axis=1))
            j, s = np.concatenate(js or [np.zeros(0, np.int64)]), np.concatenate(ss or [np.zeros(0, np.float32)])
            # each record's best view: order by record, score descending, item ascending; keep the first
            order = np.lexsort((j, -s, owner))
            first = order[np.r_[True, owner[order][1:] != owner[order][:-1]]] if len(order) else order
            keep = first[s[first] >= self.cfg.semantic_threshold]
            hits.append(
                pl.DataFrame(
                    {
                        "idx": np.asarray(usable, dtype=np.uint32)[owner[keep]],
                        "item": self._item_of_group[j[keep]].astype(np.uint32),
                        "score": s[keep].astype(np.float64),
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
