"""Exact and near-duplicate (MinHash LSH) dedup as global steps, the cluster merge, and the report summary.

Pipeline order (`dedup_steps`): `ExactDedup` -> `MinHashDedup` -> optional `SemanticDedup`
(`curator.steps.semantic`) -> `ClusterMerge`. Each dedup step annotates its own columns
(`exact_*`, `near_*`, `sem_*`: cluster id, cluster size, `*_dup_of` = the representative's record id)
and runs only on rows still kept, so each later step sees one representative per earlier cluster.
`ClusterMerge` runs last, on every row, and joins the per-step clusters into one `cluster_id`
per connected group: that is the column the train/eval split groups by.

MinHash, readable top to bottom (after text-dedup's `minhash.py`):
1. shingles (word or char n-grams of the normalised view) hashed stably (`text.shingle_hashes`:
   blake2b per distinct word, a vectorised fmix64 chain per n-gram), deduplicated per row;
2. signatures with datasketch's default "affine32" scheme, vectorised in NumPy one permutation at a
   time (`signatures`): identical to `datasketch.MinHash(num_perm, seed, hashfunc=shingle_hash32)`
   fed the same shingles (tested);
3. bands/rows from the threshold by datasketch's own optimiser (`MinHashLSH(threshold).b, .r`);
4. candidates = rows sharing a band bucket (buckets above `max_bucket` link to their first row only);
5. every candidate pair verified by exact Jaccard of the shingle sets, which `map` spilled to Parquet
   (the partial names its file, so maps may run in other processes) so memory holds band keys, not
   text; only candidate rows' sets are read back, and the files are deleted after the reduce;
6. clusters = connected components of verified pairs (`clusters.assign_clusters`); representative = highest
   quality_score, then longest n_chars, then smallest id (then row).
Why not rensa: in one 100k-doc run it inserted 1.6x more docs/s than this step's full map+reduce, but
its signatures are not datasketch's, it has no exact verification, spill or cluster output, and
this step reaches 64% of its throughput (target: half) with verification included (BENCHMARKS.md).
Empty views (after normalisation) never cluster: they stay singletons and are counted by class.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import tempfile
import uuid
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
from datasketch import MinHash, MinHashLSH
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from curator.config import DedupConfig, ExactDedupConfig, MinHashConfig
from curator.steps.base import DROP_REASON, ROW, Rule, Step
from curator.steps.clusters import COMP, assign_clusters, concat_partials, tie_break_columns
from curator.steps.text import fmix64, input_class_expr, normalize_expr, shingle_hash, shingle_hashes, view_expr

STEP_PREFIXES = ("exact", "near", "sem")
DUP_REASONS = {"exact": "exact_duplicate", "near": "near_duplicate", "sem": "semantic_duplicate"}
_OWN_SPILL_PREFIX = "curator-minhash-"


class ExactDedup:
    """Exact duplicates of one view (conversation, prompt or answer) after configurable normalisation."""

    name = "exact_dedup"
    only_kept = True

    def __init__(self, cfg: ExactDedupConfig) -> None:
        self.cfg = cfg

    def map(self, batch: pl.DataFrame) -> pl.DataFrame:
        """`row`, tie-break fields, the input class and a blake2b hash of the normalised view."""
        raw = view_expr(self.cfg.on)
        norm = normalize_expr(
            raw,
            lowercase=self.cfg.lowercase,
            collapse_whitespace=self.cfg.collapse_whitespace,
            strip_punctuation=self.cfg.strip_punctuation,
        )
        part = batch.select(
            ROW, *tie_break_columns(batch, raw), input_class_expr(raw).alias("exact_input"), norm.alias("_t")
        )
        # hashlib: a stable 128-bit digest, so the hash is the same on every machine and version.
        digests = [
            hashlib.blake2b(t.encode("utf-8", "surrogatepass"), digest_size=16).hexdigest() if t.strip() else None
            for t in part["_t"]
        ]
        return part.drop("_t").with_columns(pl.Series("_hash", digests, dtype=pl.String))

    def reduce(self, partials: Iterable[pl.DataFrame]) -> pl.DataFrame:
        """Group equal hashes (empty views stay singletons) and pick each group's representative."""
        nodes = concat_partials(partials, {"exact_input": pl.String, "_hash": pl.String}).sort(ROW)
        order = nodes.with_row_index("_i").filter(pl.col("_hash").is_not_null()).sort("_hash", "_i")
        i = order["_i"].to_numpy()
        same = (order["_hash"] == order["_hash"].shift(1)).fill_null(False).to_numpy()
        src, dst = i[1:][same[1:]], i[:-1][same[1:]]
        out = assign_clusters(nodes, src.astype(np.int64), dst.astype(np.int64), "exact")
        return out.drop("_rep_row").with_columns(nodes["exact_input"])

    def rules(self) -> list[Rule]:
        return [Rule("exact_duplicate", pl.col("exact_dup_of").is_not_null(), detail=pl.col("exact_dup_of"))]


def lsh_params(threshold: float, num_perm: int) -> tuple[int, int]:
    """(bands, rows per band) that datasketch's optimiser picks for this Jaccard threshold."""
    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
    return lsh.b, lsh.r


def _fmix32(h: np.ndarray) -> np.ndarray:
    """MurmurHash3's 32-bit finalizer, as datasketch's affine32 scheme pre-mixes each input hash.

    Written out (5 lines) because datasketch keeps it private; the equality test against
    `datasketch.MinHash` guards it.
    """
    h = h ^ (h >> np.uint32(16))
    h = h * np.uint32(0x85EBCA6B)
    h = h ^ (h >> np.uint32(13))
    h = h * np.uint32(0xC2B2AE35)
    return h ^ (h >> np.uint32(16))


def shingle_hash32(units: Sequence[str], seed: int) -> int:
    """The 32-bit hash MinHash signatures use for one shingle (for `datasketch.MinHash(hashfunc=...)`)."""
    return shingle_hash(units, seed) & 0xFFFFFFFF


def distinct_shingles(idx: np.ndarray, hashes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each doc's distinct 32-bit shingle hashes, sorted by (doc, hash): one sort of a packed u64 key.

    32 bits are what the signatures use (as datasketch's hash); for verification a collision changes
    a Jaccard by 1/|union| with probability ~|union|^2 / 2^33, negligible against the threshold.
    """
    key = np.sort((idx.astype(np.uint64) << np.uint64(32)) | (hashes & np.uint64(0xFFFFFFFF)))
    key = key[np.r_[True, key[1:] != key[:-1]]] if len(key) else key
    return (key >> np.uint64(32)).astype(np.int64), (key & np.uint64(0xFFFFFFFF)).astype(np.uint32)


def signatures(idx: np.ndarray, hashes: np.ndarray, n_docs: int, perms: np.ndarray) -> np.ndarray:
    """MinHash signatures (n_docs x num_perm, uint32) of shingle hashes grouped by doc `idx` (sorted).

    Equal to datasketch's affine32 MinHash fed the same 32-bit hashes. One permutation at a time
    over the whole batch (a 1-D multiply-add, then `np.minimum.reduceat` over the doc offsets):
    ~20x faster than a (shingles x perms) block reduced along axis 0, and memory stays one vector.
    Docs without shingles keep the empty value (all 0xFFFFFFFF), as an empty datasketch MinHash.
    """
    a, b = perms[0].astype(np.uint32), perms[1].astype(np.uint32)
    sig = np.full((len(a), n_docs), np.uint32(0xFFFFFFFF), dtype=np.uint32)
    if len(hashes) == 0:
        return np.ascontiguousarray(sig.T)
    hv = _fmix32((hashes & 0xFFFFFFFF).astype(np.uint32))
    starts = np.flatnonzero(np.r_[True, idx[1:] != idx[:-1]])
    docs = idx[starts]
    tmp = np.empty_like(hv)
    with np.errstate(over="ignore"):
        for p in range(len(a)):
            np.multiply(hv, a[p], out=tmp)
            tmp += b[p]
            sig[p, docs] = np.minimum.reduceat(tmp, starts)
    return np.ascontiguousarray(sig.T)


def band_keys(sig: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """One 64-bit key per band and document (n_docs x bands): `fmix64` chained over the band's values."""
    keys = np.empty((sig.shape[0], bands), dtype=np.uint64)
    for k in range(bands):
        acc = np.full(sig.shape[0], np.uint64(k + 1), dtype=np.uint64)
        for j in range(k * rows, (k + 1) * rows):
            acc = fmix64(acc ^ sig[:, j].astype(np.uint64))
        keys[:, k] = acc
    return keys


class MinHashDedup:
    """Near duplicates: MinHash LSH candidates verified by exact Jaccard, clustered by components."""

    name = "minhash_dedup"
    only_kept = True

    def __init__(self, cfg: MinHashConfig) -> None:
        self.cfg = cfg
        self.bands, self.rows = lsh_params(cfg.threshold, cfg.num_perm)
        self.perms = MinHash(num_perm=cfg.num_perm, seed=cfg.seed).permutations
        self._spill: Path | None = Path(cfg.spill_dir) if cfg.spill_dir else None

    def _spill_dir(self) -> Path:
        """The configured spill dir, or a temp dir made on first use (one per process that maps)."""
        if self._spill is None:
            self._spill = Path(tempfile.mkdtemp(prefix=_OWN_SPILL_PREFIX))
        self._spill.mkdir(parents=True, exist_ok=True)
        return self._spill

    def _shingles(self, batch: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
        raw = view_expr(self.cfg.on)
        word = self.cfg.shingle == "word"
        # word units skip punctuation and whitespace runs themselves; chars need the text rewritten
        norm = normalize_expr(
            raw,
            lowercase=self.cfg.lowercase,
            collapse_whitespace=not word,
            strip_punctuation=self.cfg.strip_punctuation and not word,
        )
        part = batch.select(
            ROW, *tie_break_columns(batch, raw), input_class_expr(raw).alias("near_input"), norm.alias("_t")
        )
        sh = shingle_hashes(
            part["_t"],
            kind=self.cfg.shingle,
            n=self.cfg.ngram,
            seed=self.cfg.seed,
            strip_punctuation=self.cfg.strip_punctuation,
        )
        return part.drop("_t"), sh

    def map(self, batch: pl.DataFrame) -> pl.DataFrame:
        """Spill each row's shingle-hash set to Parquet; return `row`, tie-breaks, band keys, spill file."""
        part, sh = self._shingles(batch)
        idx, h32 = distinct_shingles(sh["idx"].to_numpy(), sh["h"].to_numpy())
        sig = signatures(idx, h32, part.height, self.perms)
        counts = np.bincount(idx, minlength=part.height).astype(np.int64)
        spill = ""
        if part.height:
            spill = str(self._spill_dir() / f"part-{int(part[ROW].min()):020d}-{uuid.uuid4().hex}.parquet")
            has = np.flatnonzero(counts)
            offsets = np.concatenate([[0], np.cumsum(counts[has])]).astype(np.int32)
            lists = pl.from_arrow(pa.ListArray.from_arrays(offsets, pa.array(h32)))
            pl.DataFrame({ROW: part[ROW].gather(has), "h": lists}).write_parquet(spill)
        keys = band_keys(sig, self.bands, self.rows)
        return part.with_columns(
            pl.Series("near_shingles", counts, dtype=pl.Int64),
            pl.Series("_bands", keys, dtype=pl.Array(pl.UInt64, self.bands)),
            pl.lit(spill, dtype=pl.String).alias("_spill"),
        )

    def candidate_pairs(self, nodes: pl.DataFrame) -> np.ndarray:
        """Distinct (i, j) position pairs, i < j, that share at least one band bucket."""
        buckets = (
            nodes.with_row_index("_i")
            .filter(pl.col("near_shingles") > 0)
            .select("_i", pl.col("_bands").arr.to_list())
            .with_columns(pl.int_ranges(0, self.bands).alias("_band"))
            .explode("_bands", "_band")
            .group_by("_band", "_bands")
            .agg(pl.col("_i").sort())
            .filter(pl.col("_i").list.len() > 1)
        )
        pairs: set[tuple[int, int]] = set()
        for members in buckets["_i"]:
            ids = members.to_list()
            if len(ids) <= self.cfg.max_bucket:
                pairs.update(itertools.combinations(ids, 2))
            else:
                pairs.update((ids[0], m) for m in ids[1:])
        return np.array(sorted(pairs), dtype=np.int64).reshape(-1, 2)

    @staticmethod
    def _load_sets(files: list[str], rows: np.ndarray) -> dict[int, np.ndarray]:
        """Shingle sets of the given rows, read back from the spill files the maps named."""
        if not files or len(rows) == 0:
            return {}
        found = pl.scan_parquet(files).filter(pl.col(ROW).is_in(pl.Series(rows, dtype=pl.Int64))).collect()
        lens = found["h"].list.len().to_numpy()
        flat = found["h"].explode().to_numpy()
        ends = np.cumsum(lens)
        return {int(r): flat[e - k : e] for r, k, e in zip(found[ROW].to_numpy(), lens, ends, strict=True)}

    def reduce(self, partials: Iterable[pl.DataFrame]) -> pl.DataFrame:
        """Verify LSH candidates by exact Jaccard, cluster, and name each duplicate's representative."""
        nodes = concat_partials(partials, {"near_input": pl.String, "near_shingles": pl.Int64,
                                           "_bands": pl.Array(pl.UInt64, self.bands), "_spill": pl.String})
        files = sorted(f for f in nodes["_spill"].unique().to_list() if f) if "_spill" in nodes.columns else []
        try:
            nodes = nodes.sort(ROW)
            pairs = self.candidate_pairs(nodes)
            row_arr = nodes[ROW].to_numpy()
            sets = self._load_sets(files, np.unique(row_arr[pairs.ravel()]))
            sim = np.array([_jaccard(sets[row_arr[i]], sets[row_arr[j]]) for i, j in pairs], dtype=np.float64)
            keep = sim >= self.cfg.threshold
            out = assign_clusters(nodes, pairs[keep, 0], pairs[keep, 1], "near")
            jac = rep_jaccard(out[ROW].to_numpy(), out["_rep_row"].to_numpy(), sets)
        finally:
            _remove_spill(files)
        return out.drop("_rep_row").with_columns(
            pl.Series("near_jaccard", jac, dtype=pl.Float64), nodes["near_input"], nodes["near_shingles"]
        )

    def rules(self) -> list[Rule]:
        return [Rule("near_duplicate", pl.col("near_dup_of").is_not_null(), detail=pl.col("near_dup_of"))]


def _remove_spill(files: list[str]) -> None:
    """Delete the spill files, and the temp dirs this step made once they are empty."""
    for f in files:
        path = Path(f)
        path.unlink(missing_ok=True)
        if path.parent.name.startswith(_OWN_SPILL_PREFIX):
            with contextlib.suppress(OSError):
                path.parent.rmdir()


def rep_jaccard(rows: np.ndarray, reps: np.ndarray, sets: dict[int, np.ndarray]) -> list[float | None]:
    """Each row's exact Jaccard to its representative, rounded to 4 places (None for representatives)."""
    return [None if rep == r else round(_jaccard(sets[r], sets[rep]), 4) for r, rep in zip(rows.tolist(), reps.tolist(),
                                                                                           strict=True)]


def _jaccard(a: np.ndarray, b: np.ndarray) -> float:
    """Exact Jaccard of two sorted, distinct hash arrays."""
    inter = len(np.intersect1d(a, b, assume_unique=True))
    union = len(a) + len(b) - inter
    return inter / union if union else 0.0


class ClusterMerge:
    """One `cluster_id` per connected group of the exact, near and semantic clusters (for the split).

    Runs after the dedup steps on every row. A row in no cluster is its own group. The id is the
    smallest record id of the group, so it does not depend on batch order or on which member is kept.
    """

    name = "dedup_clusters"
    only_kept = False

    def map(self, batch: pl.DataFrame) -> pl.DataFrame:
        """`row`, `id` and whichever per-step cluster ids the batch carries."""
        cols = [f"{p}_cluster_id" for p in STEP_PREFIXES if f"{p}_cluster_id" in batch.columns]
        return batch.select(ROW, "id", *cols)

    def reduce(self, partials: Iterable[pl.DataFrame]) -> pl.DataFrame:
        """Connected components over rows that share any per-step cluster id."""
        parts = list(partials)
        nodes = pl.concat(parts, how="diagonal_relaxed").sort(ROW) if parts else \
            pl.DataFrame(schema={ROW: pl.Int64, "id": pl.String})
        n = nodes.height
        src: list[np.ndarray] = []
        dst: list[np.ndarray] = []
        offset = n
        for p in STEP_PREFIXES:
            col = f"{p}_cluster_id"
            if col not in nodes.columns:
                continue
            codes = nodes[col].cast(pl.Categorical).to_physical()
            present = codes.is_not_null().to_numpy()
            src.append(np.flatnonzero(present))
            dst.append(codes.to_numpy()[present].astype(np.int64) + offset)
            offset += int(codes.max() or 0) + 1
        s = np.concatenate(src) if src else np.zeros(0, dtype=np.int64)
        d = np.concatenate(dst) if dst else np.zeros(0, dtype=np.int64)
        graph = coo_matrix((np.ones(len(s), dtype=np.int8), (s, d)), shape=(offset, offset))
        _, labels = connected_components(graph, directed=False)
        return self.label(nodes.with_columns(pl.Series(COMP, labels[:n], dtype=pl.Int64)))

    @staticmethod
    def label(nodes: pl.DataFrame) -> pl.DataFrame:
        """`row`, `cluster_id` (the smallest id of its component `_comp`) and `cluster_size`.

        Components must be whole in `nodes` (the Ray engine calls this per shuffle bucket of `_comp`).
        """
        return nodes.select(
            ROW,
            pl.col("id").min().over(COMP).alias("cluster_id"),
            pl.len().over(COMP).cast(pl.Int64).alias("cluster_size"),
        )

    def rules(self) -> list[Rule]:
        return []


def dedup_steps(cfg: DedupConfig) -> list[Step]:
    """The enabled dedup steps in pipeline order, ending with the cluster merge the split reads."""
    steps: list[Step] = []
    if cfg.exact.enabled:
        steps.append(ExactDedup(cfg.exact))
    if cfg.minhash.enabled:
        steps.append(MinHashDedup(cfg.minhash))
    if cfg.semantic.enabled:
        from curator.steps.semantic import SemanticDedup

        steps.append(SemanticDedup(cfg.semantic))
    if steps:
        steps.append(ClusterMerge())
    return steps


def _size_bucket(size: int) -> str:
    for lo, hi in ((1, 1), (2, 2), (3, 5), (6, 10), (11, 100)):
        if lo <= size <= hi:
            return str(lo) if lo == hi else f"{lo}-{hi}"
    return ">100"


def dedup_summary(annotated: pl.DataFrame, examples: int = 3) -> dict[str, Any]:
    """Removed counts per step, input classes, the largest clusters (ids only) and a size histogram.

    No record text goes into the summary: the report fetches PII-scrubbed excerpts by id.
    """
    cols = annotated.columns
    removed: dict[str, int] = {}
    for p, reason in DUP_REASONS.items():
        if f"{p}_dup_of" not in cols:
            continue
        hit = pl.col(DROP_REASON) == reason if DROP_REASON in cols else pl.col(f"{p}_dup_of").is_not_null()
        removed[reason] = int(annotated.select(hit.fill_null(False).sum()).item())
    inputs: dict[str, dict[str, int]] = {}
    for p in ("exact", "near", "sem"):
        col = f"{p}_input"
        if col in cols:
            counts = annotated[col].drop_nulls().value_counts().sort(col)
            inputs[p] = {k: int(v) for k, v in counts.iter_rows() if k != "ok"}
    cluster_col = next((c for c in ("cluster_id", "near_cluster_id", "exact_cluster_id") if c in cols), None)
    top: list[dict[str, Any]] = []
    histogram: dict[str, int] = {}
    if cluster_col is not None:
        kept = pl.col(DROP_REASON).is_null() if DROP_REASON in cols else pl.lit(True)
        frame = annotated.filter(pl.col(cluster_col).is_not_null()).select(
            pl.col(cluster_col).alias("c"), "id", kept.alias("kept")
        )
        clusters = (
            frame.sort("kept", "id", descending=[True, False])
            .group_by("c")
            .agg(pl.len().alias("size"), pl.col("id").first().alias("rep"), pl.col("id").slice(1, examples).alias("ex"))
            .sort(["size", "c"], descending=[True, False])
        )
        for size, n in clusters.group_by("size").len().sort("size").iter_rows():
            bucket = _size_bucket(size)
            histogram[bucket] = histogram.get(bucket, 0) + int(n)
        for c, size, rep, ex in clusters.filter(pl.col("size") > 1).head(10).iter_rows():
            top.append({"cluster_id": c, "size": int(size), "representative": rep, "example_ids": list(ex)})
    return {
        "removed": removed,
        "input_classes": inputs,
        "cluster_column": cluster_col,
        "top_clusters": top,
        "cluster_size_histogram": histogram,
    }
