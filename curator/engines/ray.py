"""The Ray engine: the local engine's plan, parts and step functions, run on a Ray cluster (extra `ray`).

Same steps, same `phases()` plan, same work-dir layout and the same per-part worker functions as
`curator.engines.local`, so kept/dropped/quarantine files are byte-identical to a local run with
the same input, config and seed. What changes is where the work runs:

- **Ingest**: each input is read as a stream by one Ray task (a record's `row` is its position in
  its input, and zip archives / OASST trees must be read in order), several inputs at once; each
  batch of records goes to another Ray task that validates it, runs the first map phase and writes
  its part. Inputs must be on storage every node can read.
- **Map phases**: a Ray Dataset of parts, `map_batches` with a callable class (steps built once
  per actor, e.g. spaCy for PII), one part per call, written with `curator.io.write_parquet`.
- **Exact dedup**: the map half in `map_batches`, then a shuffle by hash: `groupby` on a bucket of
  the content hash and the step's own `reduce` per bucket (equal hashes always share a bucket).
- **MinHash**: signatures and band keys in `map_batches` (shingle sets spill to the work dir, which
  must be shared storage on a real cluster); band buckets by `groupby` on (band, key) bucket, each
  bucket group emitting its candidate pairs; the pairs meet their two shingle sets in two shuffles
  (`_pair_sims`: each set travels once per destination bucket, not once per pair) and are verified
  by exact Jaccard; connected components of the verified edges by
  alternating large-star / small-star rounds (`_components`), each a `groupby`, so no node ever holds
  all edges; labels join the nodes by a shuffle on `row`, and a shuffle on the label gives each task
  whole components for the step's own representative rule (`rank_clusters`).
- **Cluster merge**: the rows sharing a per-step cluster id become star edges by a `groupby` on the id,
  then the same components and a shuffle on the label for `ClusterMerge.label`.
- **Other global steps** (semantic dedup): the map half in `map_batches`, their `reduce` on the driver
  (the embeddings' nearest-neighbour search needs them in one index).
- **Annotations**: sorted by row (a range shuffle) and written by the workers, one file per block, into
  `global/phaseNN/`; map phases read only the row groups of their part's range.
- **Failures**: Ray retries a task or restarts an actor whose worker died; every part is written
  atomically under its own name, so a retry rewrites the same file: nothing lost, nothing doubled.
  Each attempt leaves a marker in `_work/attempts/`; the run reports the retries it counted, and a
  task whose worker dies on every one of 4 attempts fails the run with a message naming its part.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from curator.config import CurateConfig
from curator.engines import local
from curator.engines.local import ANNOTATION_ROW_GROUP, LocalEngine, RunOutput
from curator.engines.plan import Accounting, Phase, build_steps, phases
from curator.io import make_dirs, write_json, write_parquet
from curator.steps.base import ROW, GlobalStep, Step
from curator.steps.clusters import COMP, rank_clusters
from curator.steps.dedup import STEP_PREFIXES, ClusterMerge, ExactDedup, MinHashDedup, _jaccard, _remove_spill

# Ray reads these when it starts a local cluster: no usage reporting, no token prompt on a laptop.
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import ray  # after the environment above, which Ray reads at import and init

StepFactory = Callable[[CurateConfig], list[Step]]
ROWS_PER_BUCKET = 100_000  # rows per shuffle bucket: bounds the memory of one reduce task (MinHash verify)
TASK_RETRIES = 3  # Ray retries of a task whose worker died (system failures only)
PAIRS_PER_BUCKET = 1_000_000  # candidate pairs (with their copies) per verification task
MAX_COMPONENT_ROUNDS = 64  # large/small-star rounds; O(log^2 n) in theory, a handful in practice


# ---------------------------------------------------------------- cluster start-up


def start_ray(address: str | None = None, num_cpus: int | None = None, object_store_mb: int | None = None) -> None:
    """Connect to `address` (a running cluster, or "auto"), or start a quiet local Ray sized for a laptop.

    A local start uses `num_cpus` (default: all), no dashboard, no usage stats, no auth token,
    worker logs kept out of the console, and an object store of 20% of RAM capped to 2-4 GB
    (`object_store_mb` overrides) instead of Ray's 30%, which would starve the steps' own memory.
    """
    if ray.is_initialized():
        return
    logging.getLogger("ray").setLevel(logging.WARNING)
    if address:
        ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING)
    else:
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        if object_store_mb is None:
            total_mb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // (1 << 20)
            object_store_mb = int(min(max(total_mb * 0.2, 512), 4096))
        ray.init(
            num_cpus=num_cpus,
            include_dashboard=False,
            object_store_memory=object_store_mb << 20,
            log_to_driver=False,
            logging_level=logging.WARNING,
            configure_logging=True,
        )
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False  # our rich bars track parts; Ray's would interleave with them
    ctx.print_on_execution_start = False
    ctx.execution_options.preserve_order = True
    # groupby as a sort-based (pull) shuffle: plain tasks; the default hash shuffle starts aggregator
    # actors that cost ~10 s per groupby on a laptop (bench/engines_local_vs_ray.py)
    ctx.shuffle_strategy = ray.data.context.ShuffleStrategy.SORT_SHUFFLE_PULL_BASED
    logging.getLogger("ray.data").setLevel(logging.WARNING)


# ---------------------------------------------------------------- worker side


_BUILT: str | None = None  # which (config, factory) this worker process has built its steps for


def _build_worker(cfg_json: str, factory: StepFactory) -> None:
    """Build the steps in this worker process once, where the local engine's worker functions find them."""
    global _BUILT
    name = f"{getattr(factory, '__module__', '')}.{getattr(factory, '__qualname__', type(factory).__name__)}"
    key = hashlib.sha256(cfg_json.encode() + name.encode()).hexdigest()
    if key == _BUILT:
        return
    cfg = CurateConfig.model_validate_json(cfg_json)
    local._STEPS = factory(cfg)
    local._PHASES = phases(local._STEPS)
    _BUILT = key


def _mark_attempt(attempts: str, key: str) -> None:
    """Leave one marker per attempt at `key` (more than one: Ray retried it); refuse a task that keeps dying.

    Ray Data retries tasks and restarts actors whose worker died without limit; a record that kills
    its worker every time (a native crash, out of memory) would loop, so attempts are capped here.
    """
    path = make_dirs(Path(attempts))
    tried = sum(1 for _ in path.glob(f"{key}.*"))
    if tried > TASK_RETRIES:
        raise RuntimeError(
            f"{key}: its worker died on each of {tried} attempts (out of memory, or a native crash in a step); "
            "find the record with --engine local --workers 1, or give the workers more memory"
        )
    (path / f"{key}.{uuid.uuid4().hex}").touch()


@ray.remote(max_retries=TASK_RETRIES, retry_exceptions=False)
def _remote_call(cfg_json: str, factory: StepFactory, attempts: str, key: str, fn: Callable[..., Any],
                 args: tuple[Any, ...]) -> Any:
    """A local-engine worker function run as a Ray task (used for ingest batches)."""
    _mark_attempt(attempts, key)
    _build_worker(cfg_json, factory)
    return fn(*args)


@ray.remote(num_cpus=0, max_retries=TASK_RETRIES, retry_exceptions=False, scheduling_strategy="SPREAD")
def _read_input_task(cfg_json: str, factory: StepFactory, attempts: str, i: int, work: str, workers: int
                     ) -> dict[str, Any]:
    """Read input `i` on a worker (`local.ingest_input`), its batches going to other Ray tasks.

    No CPU reserved: the reader mostly waits on parsing I/O and its batch tasks, and a reader holding
    a CPU while it waits for batch tasks could starve them. A retry re-reads the input from the start
    and rewrites the same part names.
    """
    _mark_attempt(attempts, f"read-i{i:04d}")
    cfg = CurateConfig.model_validate_json(cfg_json)
    return local.ingest_input(cfg, i, Path(work), _RayExecutor(cfg_json, factory, attempts), workers, None)


def _run_task(kind: str, phase: int, pending: list[str], attempts: str, task: dict[str, str]) -> str:
    """One part through a local-engine worker function: a map phase, or the final decision (JSON result)."""
    _mark_attempt(attempts, f"{kind}{phase:02d}-{Path(task['src']).name}")
    if kind == "map":
        n, quarantined = local._run_map_phase(phase, task["src"], task["dst"], pending)
        return json.dumps({"rows": n, "quarantined": quarantined}, default=str)
    return json.dumps(local._final_part(task["src"], pending, task["kept"], task["dropped"]))


class _PhaseWorker:
    """`map_batches` callable class for map phases: steps (spaCy, presidio...) built once per actor."""

    def __init__(self, cfg_json: str, factory: StepFactory, attempts: str, phase: int, pending: list[str]) -> None:
        _build_worker(cfg_json, factory)
        self.attempts, self.phase, self.pending = attempts, phase, pending

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list[str]]:
        tasks = [json.loads(t) for t in batch["task"]]
        return {"result": [_run_task("map", self.phase, self.pending, self.attempts, t) for t in tasks]}


def _final_batch(batch: dict[str, np.ndarray], cfg_json: str, factory: StepFactory, attempts: str,
                 pending: list[str]) -> dict[str, list[str]]:
    """`map_batches` function for the final decision (cheap to set up: Ray tasks in reused workers)."""
    _build_worker(cfg_json, factory)
    return {"result": [_run_task("final", 0, pending, attempts, json.loads(t)) for t in batch["task"]]}


def _global_map(batch: pa.Table, cfg_json: str, factory: StepFactory, attempts: str, phase: int,
                pending: list[str]) -> pa.Table:
    """`map_batches` function: the map half of a global step on each part named; emits the partial rows.

    A plain function (Ray tasks), not an actor: worker processes are reused between phases and
    `_build_worker` keeps their steps, so a global phase does not pay an actor pool's start-up.
    """
    _build_worker(cfg_json, factory)
    frames = []
    for src in batch.column("src").to_pylist():
        _mark_attempt(attempts, f"global{phase:02d}-{Path(src).name}")
        frames.append(local._run_global_map(phase, src, pending))
    return pl.concat(frames, how="vertical_relaxed").to_arrow()


def _with_bucket(table: pa.Table, column: str, buckets: int) -> pa.Table:
    """Add `_bucket`: the shuffle key, a stable function of `column` (rows without one: of `row`)."""
    frame = pl.from_arrow(table)
    if column == "_hash":  # blake2b hex digest: its first 8 hex digits are already uniform
        key = pl.col("_hash").str.slice(0, 8).str.to_integer(base=16).cast(pl.Int64)
    else:
        key = pl.col(column).cast(pl.Int64)
    bucket = pl.coalesce(key, pl.col(ROW)) % buckets
    return frame.with_columns(bucket.alias("_bucket")).to_arrow()


def _reduce_bucket(table: pa.Table, step: GlobalStep) -> pa.Table:
    """The step's own reduce on one shuffle bucket (valid when no cluster spans two buckets)."""
    return step.reduce([pl.from_arrow(table).drop("_bucket")]).to_arrow()


def _band_rows(table: pa.Table, bands: int, buckets: int) -> pa.Table:
    """One row per (record, band): `row`, `_band`, `_key` and the shuffle bucket of (band, key)."""
    frame = pl.from_arrow(table).filter(pl.col("near_shingles") > 0)
    out = (
        frame.select(ROW, pl.col("_bands").arr.to_list().alias("_key"), pl.int_ranges(0, bands).alias("_band"))
        .explode("_key", "_band")
        .with_columns(pl.col("_band").cast(pl.Int64))
    )
    bucket = ((pl.col("_key") % buckets).cast(pl.Int64) + pl.col("_band")) % buckets
    return out.with_columns(bucket.alias("_bucket")).to_arrow()


def _bucket_pairs(table: pa.Table, max_bucket: int) -> pa.Table:
    """Candidate pairs (a < b, by row) of the band buckets in one shuffle bucket.

    The same rule as `MinHashDedup.candidate_pairs` (a bucket above `max_bucket` links its first
    row to the others only), applied to the rows of one shuffle bucket instead of all of them.
    A pair sharing several bands comes out of several buckets; the first set join meets the copies.
    """
    groups = (
        pl.from_arrow(table)
        .group_by("_band", "_key")
        .agg(pl.col(ROW).sort())
        .filter(pl.col(ROW).list.len() > 1)
    )
    a: list[int] = []
    b: list[int] = []
    for members in groups[ROW].to_list():
        if len(members) <= max_bucket:
            for i, x in enumerate(members):
                a.extend([x] * (len(members) - i - 1))
                b.extend(members[i + 1 :])
        else:
            a.extend([members[0]] * (len(members) - 1))
            b.extend(members[1:])
    return pl.DataFrame({"a": a, "b": b}, schema={"a": pl.Int64, "b": pl.Int64}).unique().to_arrow()


SET_TYPE = pa.large_list(pa.uint32())  # a row's distinct 32-bit shingle hashes, as Polars hands them to Arrow


def _set_rows(batch: pa.Table) -> pa.Table:
    """The spill files named in `src` as the set side of a join (`_set_row`, `_set_h`)."""
    table = pa.concat_tables([pq.read_table(f) for f in batch.column("src").to_pylist()])
    return pa.table({"_set_row": table.column(ROW), "_set_h": table.column("h").cast(SET_TYPE)})


def _set_arrays(column: pl.Series) -> list[np.ndarray]:
    """A list column of shingle hashes as one NumPy view per row (no per-element Python objects)."""
    lens = column.list.len().fill_null(0).to_numpy()
    flat = column.explode().drop_nulls().to_numpy()
    ends = np.cumsum(lens)
    return [flat[e - k : e] for k, e in zip(lens.tolist(), ends.tolist(), strict=True)]


def _edges_at(table: pa.Table, threshold: float, buckets: int) -> pa.Table:
    """Verified candidate pairs (`_sim` at or above the threshold) as edges in both directions."""
    frame = pl.from_arrow(table)
    return _both_ways(frame.filter(pl.col("_sim") >= threshold).select("a", "b"), buckets)


def _both_ways(edges: pl.DataFrame, buckets: int) -> pa.Table:
    """Edges (a, b) as rows (u, v) in both directions, with the shuffle bucket of `u` (large-star input)."""
    u, v = edges.columns
    both = pl.concat([edges.select(pl.col(u).alias("u"), pl.col(v).alias("v")),
                      edges.select(pl.col(v).alias("u"), pl.col(u).alias("v"))])
    return both.with_columns((pl.col("u") % buckets).alias("_bucket"), *_NO_CHECKSUM).to_arrow()


# checksum columns of a small-star output: null on edge rows, set on the one summary row per bucket
_CHECKSUM = ("_n", "_h1", "_h2")
_NO_CHECKSUM = [pl.lit(None, dtype=pl.Int64).alias(c) for c in _CHECKSUM]


def _large_star(table: pa.Table, buckets: int) -> pa.Table:
    """Large-star on one bucket of (u, v) rows: each larger neighbour of u links to min(u, its neighbours).

    Output (hi, lo) with hi > lo, keyed by `hi` for the small-star step (Kiveris et al., 2014).
    """
    f = pl.from_arrow(table).filter(pl.col("u").is_not_null()).select("u", "v").unique()
    f = f.with_columns(pl.min_horizontal(pl.col("v").min().over("u"), pl.col("u")).alias("m"))
    out = f.filter(pl.col("v") > pl.col("u")).select(pl.col("v").alias("hi"), pl.col("m").alias("lo")).unique()
    return out.with_columns((pl.col("hi") % buckets).alias("_bucket")).to_arrow()


def _small_star(table: pa.Table, buckets: int) -> pa.Table:
    """Small-star on one bucket of (hi, lo) rows: hi and its smaller neighbours link to the smallest of them.

    Also emits one checksum row (count and two hash sums of the distinct input edges; every edge is
    in exactly one bucket, that of its larger end): equal checksums in two rounds = a fixed point.
    """
    f = pl.from_arrow(table).select("hi", "lo").unique()
    sums = [(pl.struct("hi", "lo").hash(seed) % (1 << 31)).cast(pl.Int64).sum().alias(f"h{seed}") for seed in (1, 2)]
    n, h1, h2 = f.select(pl.len().cast(pl.Int64), *sums).row(0)
    f = f.with_columns(pl.col("lo").min().over("hi").alias("m"))
    star = pl.concat([f.select(pl.col("lo").alias("a"), "m"), f.select(pl.col("hi").alias("a"), "m")])
    star = star.filter(pl.col("a") != pl.col("m")).unique()
    checksum = pl.DataFrame({"u": [None], "v": [None], "_bucket": [0], "_n": [n], "_h1": [h1], "_h2": [h2]},
                            schema={c: pl.Int64 for c in ("u", "v", "_bucket", *_CHECKSUM)})
    return pl.concat([pl.from_arrow(_both_ways(star, buckets)), checksum]).to_arrow()


def _checksum_rows(table: pa.Table) -> pa.Table:
    """The checksum rows of a small-star output."""
    return pl.from_arrow(table).filter(pl.col("u").is_null()).select(*_CHECKSUM).to_arrow()


def _labels(table: pa.Table) -> pa.Table:
    """A converged small-star output as `row` -> `_lab` (its component's smallest row)."""
    f = pl.from_arrow(table).filter(pl.col("u") > pl.col("v"))
    return f.select(pl.col("u").alias(ROW), pl.col("v").alias("_lab")).unique(ROW).to_arrow()


def _conform(table: pa.Table, schema: pa.Schema, key: str, buckets: int) -> pa.Table:
    """Rows of one side of a join in the joint schema (the other side's columns null), keyed by `key`'s bucket."""
    cols = [table.column(f.name).cast(f.type) if f.name in table.column_names else pa.nulls(table.num_rows, f.type)
            for f in schema]
    out = pl.from_arrow(pa.Table.from_arrays(cols, schema=schema))
    return out.with_columns((pl.col(key) % buckets).alias("_bucket")).to_arrow()


def _route_sets(table: pa.Table, a: str, b: str, columns: list[str], buckets: int, distinct: bool) -> pa.Table:
    """First half of the pair/set join, on one bucket of `a`: the pairs go on to `b`'s bucket, and each
    set of an `a` row goes there once per destination bucket (not once per pair: a representative
    with a thousand duplicates sends its set to at most `buckets` places)."""
    f = pl.from_arrow(table).drop("_bucket")
    is_set = pl.col("_set_row").is_not_null()
    sets = f.filter(is_set).select("_set_row", "_set_h")
    pairs = f.filter(~is_set)
    pairs = pairs.unique(subset=[a, b], maintain_order=True) if distinct else pairs
    pairs = pairs.with_columns((pl.col(b) % buckets).alias("_bucket"))
    carried = pairs.select(pl.col(a).alias("_set_row"), "_bucket").unique().join(sets, on="_set_row", how="inner")
    out = pl.concat([pairs.drop("_set_row", "_set_h"), carried], how="diagonal_relaxed")
    return out.select(*columns, "_bucket").to_arrow()


def _pair_sims(table: pa.Table, a: str, b: str) -> pa.Table:
    """Second half, on one bucket of `b`: each pair's exact Jaccard `_sim` from the sets that met here."""
    f = pl.from_arrow(table).drop("_bucket")
    is_set = pl.col("_set_row").is_not_null()
    sets = f.filter(is_set).unique("_set_row")
    lookup = dict(zip(sets["_set_row"].to_list(), _set_arrays(sets["_set_h"]), strict=True))
    pairs = f.filter(~is_set).drop("_set_row", "_set_h")
    sim = [_jaccard(lookup[x], lookup[y]) for x, y in zip(pairs[a].to_list(), pairs[b].to_list(), strict=True)]
    return pairs.with_columns(pl.Series("_sim", sim, dtype=pl.Float64)).to_arrow()


def _attach(table: pa.Table, buckets: int) -> pa.Table:
    """Join one row bucket's nodes with their labels: `_comp` (own row when in no edge), keyed by `_comp`."""
    f = pl.from_arrow(table).drop("_bucket")
    labels = f.filter(pl.col("_lab").is_not_null()).select(ROW, "_lab")
    nodes = f.filter(pl.col("_lab").is_null()).drop("_lab").join(labels, on=ROW, how="left", maintain_order="left")
    comp = pl.coalesce("_lab", ROW)
    return nodes.with_columns(comp.alias(COMP)).drop("_lab").with_columns(
        (pl.col(COMP) % buckets).alias("_bucket")
    ).to_arrow()


def _finish_bucket(table: pa.Table, finish: Callable[[pl.DataFrame], pl.DataFrame]) -> pa.Table:
    """A step's per-component finish (representatives, merged ids) on one bucket of whole components."""
    return finish(pl.from_arrow(table).drop("_bucket")).to_arrow()


def _minhash_finish(nodes: pl.DataFrame) -> pl.DataFrame:
    """MinHash clusters of whole components: the representative rule, plus what the Jaccard pass reads."""
    ranked = rank_clusters(nodes, "near")
    return ranked.join(nodes.select(ROW, "near_input", "near_shingles"), on=ROW, how="left", maintain_order="left")


def _rep_jaccard(table: pa.Table) -> pa.Table:
    """The annotation in the step's column order; `near_jaccard` = a duplicate's `_sim` to its representative."""
    f = pl.from_arrow(table)
    # Python's round, as the step rounds, so the annotation has the same bits
    jac = pl.Series("near_jaccard", [None if x is None else round(x, 4) for x in f["_sim"]], dtype=pl.Float64)
    return f.select(ROW, "near_cluster_id", "near_cluster_size", "near_dup_of", jac, "near_input",
                    "near_shingles").to_arrow()


def _with_no_sim(table: pa.Table) -> pa.Table:
    """Representatives and singletons: no Jaccard to a representative (`_sim` null)."""
    return table.append_column("_sim", pa.nulls(table.num_rows, pa.float64()))


def _cluster_keys(table: pa.Table, buckets: int) -> pa.Table:
    """Cluster merge: one (key, row) per per-step cluster id of a row, keyed by a hash of the key."""
    f = pl.from_arrow(table)
    cols = [c for c in (f"{p}_cluster_id" for p in STEP_PREFIXES) if c in f.columns]
    keys = [f.select(ROW, (pl.lit(f"{c}:") + pl.col(c)).alias("_key")) for c in cols]
    out = pl.concat(keys) if keys else pl.DataFrame(schema={ROW: pl.Int64, "_key": pl.String})
    # polars' hash is the same in every worker of one installation, which is all a shuffle needs
    return out.drop_nulls("_key").with_columns((pl.col("_key").hash(7) % buckets).cast(pl.Int64).alias("_bucket")
                                               ).to_arrow()


def _key_edges(table: pa.Table, buckets: int) -> pa.Table:
    """Rows sharing a key, as star edges (smallest row, other row): the same components as all pairs."""
    f = pl.from_arrow(table).with_columns(pl.col(ROW).min().over("_key").alias("_first"))
    return _both_ways(f.filter(pl.col(ROW) != pl.col("_first")).select("_first", ROW), buckets)


def _write_rows(table: pa.Table, dst: str) -> pa.Table:
    """Write one block of a row-sorted annotation as its own file, named by its first row."""
    frame = pl.from_arrow(table).sort(ROW)
    if frame.height:
        write_parquet(frame, Path(dst) / f"{frame[ROW][0]:020d}.parquet", row_group_size=ANNOTATION_ROW_GROUP)
    return pa.table({"rows": [frame.height]})


# ---------------------------------------------------------------- driver side


@dataclass
class RayRunOutput(RunOutput):
    """A run's outputs plus the task attempts Ray retried (task key -> extra attempts)."""

    retries: dict[str, int] = field(default_factory=dict)


class _RayExecutor(Executor):
    """An `Executor` whose tasks are Ray tasks (with retries), so the local engine's ingest runs on Ray."""

    def __init__(self, cfg_json: str, factory: StepFactory, attempts: str) -> None:
        self.cfg_json, self.factory, self.attempts = cfg_json, factory, attempts

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        part = next(a for a in args if isinstance(a, str) and a.endswith(".parquet"))  # the part it writes
        key = f"{fn.__name__}-{Path(part).name}"
        ref = _remote_call.remote(self.cfg_json, self.factory, self.attempts, key, fn, args)
        return ref.future()


class RayEngine(LocalEngine):
    """Run a `CurateConfig` on Ray: same plan, parts and outputs as `LocalEngine`, work spread over a cluster.

    `step_factory` builds the steps in every worker (default: `build_steps`); it must give the same
    phase plan as `build_steps`, which the driver uses (tests wrap a step with one that fails).
    """

    def __init__(
        self,
        cfg: CurateConfig,
        out: Path,
        *,
        address: str | None = None,
        num_cpus: int | None = None,
        object_store_mb: int | None = None,
        step_factory: StepFactory = build_steps,
        readers: int | None = None,
        progress: Any = None,
    ) -> None:
        super().__init__(cfg, out, workers=num_cpus or 1, progress=progress)
        self.address, self.num_cpus, self.object_store_mb = address, num_cpus, object_store_mb
        self.readers = readers  # inputs read at once (default: one per 3 CPUs of the cluster)
        self.step_factory = step_factory
        self.attempts = self.work / "attempts"

    def run(self, fresh: bool = False) -> RayRunOutput:
        """Start or join Ray, then run the local engine's plan with Ray doing the work; count retries."""
        start_ray(self.address, self.num_cpus, self.object_store_mb)
        self.workers = max(1, int(ray.cluster_resources().get("CPU", 1)))
        shutil.rmtree(self.attempts, ignore_errors=True)
        base = super().run(fresh=fresh)
        return RayRunOutput(**base.__dict__, retries=self.retries())

    def retries(self) -> dict[str, int]:
        """Extra attempts per task key, from the markers each attempt left (empty: no retries)."""
        if not self.attempts.is_dir():
            return {}
        counts = Counter(p.name.rsplit(".", 1)[0] for p in self.attempts.iterdir())
        return {key: n - 1 for key, n in sorted(counts.items()) if n > 1}

    def _executor(self, steps: list[Step]) -> Executor:
        """Ray tasks and actors; each builds its own steps with `step_factory` (`steps` are the driver's)."""
        return _RayExecutor(self._cfg_json, self.step_factory, str(self.attempts))

    def _read_inputs(self, pool: Executor, todo: list[int]) -> Iterator[tuple[int, dict[str, Any]]]:
        """Read inputs as Ray tasks, `readers` at a time, so several inputs parse at once on a cluster."""
        readers = self.readers or max(1, round(self.workers / 3))  # one reader's parsing feeds ~3 CPUs of steps
        running: dict[Any, int] = {}
        queue = list(todo)
        task = self.progress.task("ingest (inputs read)", total=len(todo)) if self.progress and todo else None
        while queue or running:
            while queue and len(running) < readers:
                i = queue.pop(0)
                ref = _read_input_task.remote(self._cfg_json, self.step_factory, str(self.attempts), i,
                                              str(self.work), self.workers)
                running[ref] = i
            ready, _ = ray.wait(list(running), num_returns=1)
            i = running.pop(ready[0])
            yield i, ray.get(ready[0])
            if task is not None:
                self.progress.advance(task, 1)

    def _dataset(self, rows: list[dict[str, str]]) -> ray.data.Dataset:
        """A dataset of tasks (one per part), split so every worker gets parts to do."""
        return ray.data.from_items(rows, override_num_blocks=max(1, min(len(rows), 4 * self.workers)))

    def _run_parts(self, label: str, ds: ray.data.Dataset, total: int) -> Iterator[dict[str, Any]]:
        """Stream the per-part results of `ds` to the driver, advancing a progress bar per part."""
        task = self.progress.task(label, total=total) if self.progress else None
        for row in ds.iter_rows():
            if task is not None:
                self.progress.advance(task, 1)
            yield json.loads(row["result"])

    def _run_map_tasks(
        self, pool: Executor, phase: Phase, todo: list[tuple[Path, Path]], pending: list[str]
    ) -> list[dict[str, Any]]:
        """Map phases as `map_batches` over an actor pool: each actor builds the steps once."""
        tasks = [{"task": json.dumps({"src": str(p), "dst": str(n)})} for p, n in todo]
        ds = self._dataset(tasks).map_batches(
            _PhaseWorker,
            fn_constructor_args=(self._cfg_json, self.step_factory, str(self.attempts), phase.index, pending),
            batch_size=1,
            compute=ray.data.ActorPoolStrategy(min_size=1, max_size=self.workers),
            num_cpus=1,
        )
        return [row for result in self._run_parts(phase.name, ds, len(todo)) for row in result["quarantined"]]

    def _global(self, pool: Executor, phase: Phase, parts: list[Path], pending: list[str]) -> Path:
        """A global phase: its map on the workers, then a distributed reduce into a directory of row ranges.

        Exact dedup, MinHash and the cluster merge reduce on the workers (shuffles and distributed
        connected components); other global steps (semantic dedup) reduce on the driver.
        """
        path = self.work / "global" / f"phase{phase.index:02d}"
        done = path.with_suffix(".done.json")
        if done.exists() and path.is_dir():  # a finished run keeps the note but deletes the annotation
            return path
        shutil.rmtree(path, ignore_errors=True)  # a killed earlier attempt's files may split rows differently
        step: GlobalStep = phase.steps[0]  # type: ignore[assignment]
        self._mark(f"{phase.name} (map)")
        partials = self._dataset([{"src": str(p)} for p in parts]).map_batches(
            _global_map,
            fn_args=(self._cfg_json, self.step_factory, str(self.attempts), phase.index, pending),
            batch_size=1,
            batch_format="pyarrow",
            num_cpus=1,
        ).materialize()
        n_rows = partials.count()
        buckets = max(2 * self.workers, math.ceil(n_rows / ROWS_PER_BUCKET))  # 2x: a slow bucket overlaps
        rounds = 0
        if n_rows and isinstance(step, ExactDedup):
            self._mark(f"{phase.name} (shuffle + reduce)")
            rows = self._write_annotation(self._exact_reduce(step, partials, buckets), path)
        elif n_rows and isinstance(step, MinHashDedup):
            rows, rounds = self._minhash_reduce(partials, buckets, path)
        elif n_rows and isinstance(step, ClusterMerge):
            edges = partials.map_batches(_cluster_keys, batch_format="pyarrow", batch_size=None, fn_args=(buckets,))
            edges = edges.groupby("_bucket", num_partitions=buckets).map_groups(
                _key_edges, batch_format="pyarrow", fn_args=(buckets,)
            )
            clusters, rounds = self._clusters(phase.name, partials, edges, buckets, ClusterMerge.label)
            rows = self._write_annotation(clusters, path)
        else:
            self._mark(f"{phase.name} (reduce, driver)")
            annotation = step.reduce(_frames(partials)).sort(ROW)
            write_parquet(annotation, path / f"{0:020d}.parquet", row_group_size=ANNOTATION_ROW_GROUP)
            rows = annotation.height
        write_json({"rows": rows, "component_rounds": rounds}, done)
        return path

    def _exact_reduce(self, step: ExactDedup, partials: ray.data.Dataset, buckets: int) -> ray.data.Dataset:
        """Shuffle by content hash (`groupby` on its bucket), then the step's reduce per bucket."""
        shuffled = partials.map_batches(_with_bucket, batch_format="pyarrow", batch_size=None,
                                        fn_args=("_hash", buckets))
        grouped = shuffled.groupby("_bucket", num_partitions=buckets)
        return grouped.map_groups(_reduce_bucket, batch_format="pyarrow", fn_args=(step,))

    def _minhash_reduce(self, partials: ray.data.Dataset, buckets: int, path: Path) -> tuple[int, int]:
        """Band buckets by `groupby`, pairs joined with their shingle sets by shuffles, distributed components.

        The same annotation as `MinHashDedup.reduce` (which holds all band keys, pairs and shingle sets
        on one node), with no pass that gathers the pairs or the rows on one node: the equality test
        against LocalEngine guards the equivalence. Returns (rows written, component rounds).
        """
        step = MinHashDedup(self._worker_cfg.dedup.minhash)
        self._mark("minhash_dedup (band shuffle + set joins + verify)")
        band_rows = partials.map_batches(_band_rows, batch_format="pyarrow", batch_size=None,
                                         fn_args=(step.bands, buckets * step.bands))
        pairs = band_rows.groupby("_bucket", num_partitions=buckets).map_groups(
            _bucket_pairs, batch_format="pyarrow", fn_args=(step.cfg.max_bucket,)
        )
        pairs = pairs.materialize()
        files = sorted(f for f in partials.unique("_spill") if f)
        try:
            sets = self._dataset([{"src": f} for f in files]).map_batches(_set_rows, batch_format="pyarrow",
                                                                          batch_size=1)
            pair_schema = pa.schema([("a", pa.int64()), ("b", pa.int64())])
            # buckets sized by pairs too: a corpus with large duplicate clusters has many pairs per row
            pair_buckets = max(buckets, math.ceil(pairs.count() / PAIRS_PER_BUCKET))
            sims = self._pair_sims(pairs, pair_schema, "a", "b", sets, pair_buckets, distinct=True)
            edges = sims.map_batches(_edges_at, batch_format="pyarrow", batch_size=None,
                                     fn_args=(step.cfg.threshold, buckets))
            nodes = partials.drop_columns(["_bands", "_spill"])
            clusters, rounds = self._clusters(step.name, nodes, edges, buckets, _minhash_finish)
            clusters = clusters.materialize()
            self._mark("minhash_dedup (Jaccard to representatives)")
            dups = clusters.filter(expr=f"{ROW} != _rep_row")
            dups = self._pair_sims(dups, clusters.schema().base_schema, ROW, "_rep_row", sets, buckets)
            annotation = dups.union(clusters.filter(expr=f"{ROW} == _rep_row").map_batches(
                _with_no_sim, batch_format="pyarrow", batch_size=None)
            ).map_batches(_rep_jaccard, batch_format="pyarrow", batch_size=None)
            return self._write_annotation(annotation, path), rounds
        finally:
            _remove_spill(files)

    def _pair_sims(
        self,
        rows: ray.data.Dataset,
        schema: pa.Schema,
        a: str,
        b: str,
        sets: ray.data.Dataset,
        buckets: int,
        distinct: bool = False,
    ) -> ray.data.Dataset:
        """`rows` (of `schema`) plus `_sim`, the exact Jaccard of the shingle sets of rows `a` and `b`.

        A join by two shuffles with the sets (on `a`'s bucket, then on `b`'s), so no task holds more
        than its bucket's sets; reading sets back by row from the spill instead made every task scan
        every spill file, quadratic in the corpus (BENCHMARKS.md, "Engines").
        """
        joint = pa.schema([*schema, ("_set_row", pa.int64()), ("_set_h", SET_TYPE)])
        set_side = sets.map_batches(_conform, batch_format="pyarrow", batch_size=None,
                                    fn_args=(joint, "_set_row", buckets))
        left = rows.map_batches(_conform, batch_format="pyarrow", batch_size=None, fn_args=(joint, a, buckets))
        routed = left.union(set_side).groupby("_bucket", num_partitions=buckets).map_groups(
            _route_sets, batch_format="pyarrow", fn_args=(a, b, joint.names, buckets, distinct)
        )
        return routed.union(set_side).groupby("_bucket", num_partitions=buckets).map_groups(
            _pair_sims, batch_format="pyarrow", fn_args=(a, b)
        )

    def _clusters(
        self,
        name: str,
        nodes: ray.data.Dataset,
        edges: ray.data.Dataset,
        buckets: int,
        finish: Callable[[pl.DataFrame], pl.DataFrame],
    ) -> tuple[ray.data.Dataset, int]:
        """`finish` applied to whole components of the graph (`nodes` rows, `edges` both ways), all distributed.

        Components by `_components`; each node gets its label by a shuffle on `row` (nodes in no
        edge are their own component), then a shuffle on the label gives each task whole components.
        Returns the finished rows and the number of component rounds.
        """
        edges = edges.materialize()
        if edges.count() == 0:
            comps = nodes.map_batches(_conform, batch_format="pyarrow", batch_size=None,
                                      fn_args=(_with_label(nodes), ROW, buckets)).map_batches(
                _attach, batch_format="pyarrow", batch_size=None, fn_args=(buckets,))
            return comps.map_batches(_finish_bucket, batch_format="pyarrow", batch_size=None, fn_args=(finish,)), 0
        self._mark(f"{name} (components)")
        labels, rounds = self._components(edges, buckets)
        self._mark(f"{name} (label join + finish)")
        schema = _with_label(nodes)
        rows = nodes.map_batches(_conform, batch_format="pyarrow", batch_size=None, fn_args=(schema, ROW, buckets)
                                 ).union(labels.map_batches(_conform, batch_format="pyarrow", batch_size=None,
                                                            fn_args=(schema, ROW, buckets)))
        comps = rows.groupby("_bucket", num_partitions=buckets).map_groups(_attach, batch_format="pyarrow",
                                                                           fn_args=(buckets,))
        finished = comps.groupby("_bucket", num_partitions=buckets).map_groups(
            _finish_bucket, batch_format="pyarrow", fn_args=(finish,)
        )
        return finished, rounds

    def _components(self, edges: ray.data.Dataset, buckets: int) -> tuple[ray.data.Dataset, int]:
        """Connected components of the edges without gathering them: `row` -> `_lab`, the component's smallest row.

        Alternating large-star and small-star rounds (Kiveris et al., "Connected Components in
        MapReduce and Beyond", SoCC 2014: O(log^2 n) rounds, in practice a handful), each a groupby
        on a node bucket. The graph is a set of stars around each component's smallest node once a
        round leaves the edge set unchanged, which the small-star checksums detect. Hand-written:
        Ray Data has no graph operators, and GraphFrames-style libraries need Spark.
        """
        cur, seen = edges, None
        for rounds in range(1, MAX_COMPONENT_ROUNDS + 1):
            large = cur.groupby("_bucket", num_partitions=buckets).map_groups(
                _large_star, batch_format="pyarrow", fn_args=(buckets,)
            )
            cur = large.groupby("_bucket", num_partitions=buckets).map_groups(
                _small_star, batch_format="pyarrow", fn_args=(buckets,)
            ).materialize()
            sums = cur.map_batches(_checksum_rows, batch_format="pyarrow", batch_size=None).sum(list(_CHECKSUM))
            if sums == seen:
                return cur.map_batches(_labels, batch_format="pyarrow", batch_size=None), rounds
            seen = sums
        raise RuntimeError(f"connected components did not converge in {MAX_COMPONENT_ROUNDS} rounds; please report it")

    def _write_annotation(self, annotation: ray.data.Dataset, path: Path) -> int:
        """Sort by row (a range shuffle) and write each block as its own file, from the workers."""
        make_dirs(path)
        written = annotation.sort(ROW).map_batches(_write_rows, batch_format="pyarrow", batch_size=None,
                                                   fn_args=(str(path),))
        return int(written.sum("rows") or 0)

    def _mark(self, label: str) -> Any:
        """A progress task for a pass without a part count (also how bench/ times each pass)."""
        return self.progress.task(label, total=None) if self.progress else None

    def _final(
        self, pool: Executor, parts: list[Path], pending: list[str], acct: Accounting
    ) -> tuple[list[Path], list[Path]]:
        kept, dropped = self._output_paths(parts)
        tasks = [
            {"src": str(p), "kept": str(k), "dropped": str(d)} for p, k, d in zip(parts, kept, dropped, strict=True)
        ]
        ds = self._dataset([{"task": json.dumps(t)} for t in tasks]).map_batches(
            _final_batch, fn_args=(self._cfg_json, self.step_factory, str(self.attempts), pending), batch_size=1,
            num_cpus=1,
        )
        for stats in self._run_parts("decide", ds, len(tasks)) if tasks else ():
            acct.kept += stats["kept"]
            acct.dropped.update(stats["dropped"])
        return kept, dropped


def _with_label(nodes: ray.data.Dataset) -> pa.Schema:
    """The nodes' schema plus `_lab`, the label column the component join adds."""
    return pa.schema([*nodes.schema().base_schema, pa.field("_lab", pa.int64())])


def _frames(ds: ray.data.Dataset) -> Iterable[pl.DataFrame]:
    """The dataset's blocks as Polars frames, streamed to the driver one block at a time."""
    for table in ds.iter_batches(batch_format="pyarrow", batch_size=None):
        yield pl.from_arrow(table)
