"""The Ray engine: the local engine's plan, parts and step functions, run on a Ray cluster (extra `ray`).

Same steps, same `phases()` plan, same work-dir layout and the same per-part worker functions as
`curator.engines.local`, so kept/dropped/quarantine files are byte-identical to a local run with
the same input, config and seed. What changes is where the work runs:

- **Ingest**: the driver reads each input as a stream (a record's `row` is its position in its
  input, and zip archives / OASST trees must be read in order); each batch of records goes to a Ray
  task that validates it, runs the first map phase and writes its part. Parsing is the cheap half,
  the steps the expensive half; the driver's parse rate bounds the run (BENCHMARKS.md, "Engines").
- **Map phases**: a Ray Dataset of parts, `map_batches` with a callable class (steps built once
  per actor, e.g. spaCy for PII), one part per call, written with `curator.io.write_parquet`.
- **Exact dedup**: the map half in `map_batches`, then a shuffle by hash: `groupby` on a bucket of
  the content hash and the step's own `reduce` per bucket (equal hashes always share a bucket).
- **MinHash**: signatures and band keys in `map_batches` (shingle sets spill to the work dir, which
  must be shared storage on a real cluster); band buckets by `groupby` on (band, key) bucket, each
  bucket group emitting its candidate pairs; exact-Jaccard verification of the pairs (and of each
  duplicate against its representative) in `map_batches`. The connected components run on the
  driver over the (row, tie-break) nodes and the verified edges: ~100 bytes per record plus 16 per
  candidate pair (100M records ~ 10-16 GB). Past that, a distributed components pass (min-label
  propagation with joins) would replace the driver step; it is not written yet.
- **Other global steps** (cluster merge, semantic dedup): the map half in `map_batches`, their
  `reduce` on the driver (cluster merge holds row + ids: ~150 bytes per record).
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

from curator.config import CurateConfig
from curator.engines import local
from curator.engines.local import LocalEngine, RunOutput
from curator.io import write_parquet
from curator.pipeline import Accounting, Phase, build_steps, phases
from curator.steps.base import ROW, GlobalStep, Step
from curator.steps.dedup import ExactDedup, MinHashDedup, _jaccard, _remove_spill, assign_clusters

# Ray reads these when it starts a local cluster: no usage reporting, no token prompt on a laptop.
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import ray  # after the environment above, which Ray reads at import and init

StepFactory = Callable[[CurateConfig], list[Step]]
ROWS_PER_BUCKET = 1_000_000  # rows per shuffle bucket: bounds the memory of one reduce task
TASK_RETRIES = 3  # Ray retries of a task whose worker died (system failures only)


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
    local._ANNOTATIONS.clear()
    _BUILT = key


def _mark_attempt(attempts: str, key: str) -> None:
    """Leave one marker per attempt at `key` (more than one: Ray retried it); refuse a task that keeps dying.

    Ray Data retries tasks and restarts actors whose worker died without limit; a record that kills
    its worker every time (a native crash, out of memory) would loop, so attempts are capped here.
    """
    path = Path(attempts)
    path.mkdir(parents=True, exist_ok=True)
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


def _verify_pairs(table: pa.Table, files: list[str]) -> pa.Table:
    """Exact Jaccard `sim` of each pair of rows (`a`, `b`), their shingle sets read back from the spill."""
    frame = pl.from_arrow(table)
    a, b = frame["a"].to_numpy(), frame["b"].to_numpy()
    sets = MinHashDedup._load_sets(files, np.unique(np.concatenate([a, b])))
    sim = [_jaccard(sets[x], sets[y]) for x, y in zip(a.tolist(), b.tolist(), strict=True)]
    return frame.with_columns(pl.Series("sim", sim, dtype=pl.Float64)).to_arrow()


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
        progress: Any = None,
    ) -> None:
        super().__init__(cfg, out, workers=num_cpus or 1, progress=progress)
        self.address, self.num_cpus, self.object_store_mb = address, num_cpus, object_store_mb
        self.step_factory = step_factory
        self.attempts = self.work / "attempts"
        self._worker_cfg = cfg.model_copy(deep=True)
        if cfg.dedup.minhash.enabled and cfg.dedup.minhash.spill_dir is None:
            # shingle sets spill under the work dir, where the verification tasks on any node read them back
            self._worker_cfg.dedup.minhash.spill_dir = str(self.work / "minhash_spill")
        self._cfg_json = self._worker_cfg.model_dump_json()

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

    def _executor(self) -> Executor:
        return _RayExecutor(self._cfg_json, self.step_factory, str(self.attempts))

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
        path = self.work / "global" / f"phase{phase.index:02d}.parquet"
        if path.exists():
            return path
        step: GlobalStep = phase.steps[0]  # type: ignore[assignment]
        self._mark(f"{phase.name} (map)")
        partials = self._dataset([{"src": str(p)} for p in parts]).map_batches(
            _global_map,
            fn_args=(self._cfg_json, self.step_factory, str(self.attempts), phase.index, pending),
            batch_size=1,
            batch_format="pyarrow",
            num_cpus=1,
        ).materialize()
        task = self._mark(f"{phase.name} (shuffle + reduce)")
        n_rows = partials.count()
        buckets = max(self.workers, math.ceil(n_rows / ROWS_PER_BUCKET))
        if n_rows and isinstance(step, ExactDedup):
            annotation = self._exact_reduce(step, partials, buckets)
        elif n_rows and isinstance(step, MinHashDedup):
            annotation = self._minhash_reduce(partials, buckets)
        else:
            annotation = step.reduce(_frames(partials))
        write_parquet(annotation.sort(ROW), path)
        if task is not None:
            self.progress.finish(task, n_rows)
        return path

    def _exact_reduce(self, step: ExactDedup, partials: ray.data.Dataset, buckets: int) -> pl.DataFrame:
        """Shuffle by content hash (`groupby` on its bucket), then the step's reduce per bucket."""
        shuffled = partials.map_batches(_with_bucket, batch_format="pyarrow", batch_size=None,
                                        fn_args=("_hash", buckets))
        grouped = shuffled.groupby("_bucket", num_partitions=buckets)
        reduced = grouped.map_groups(_reduce_bucket, batch_format="pyarrow", fn_args=(step,))
        return pl.concat(list(_frames(reduced)), how="vertical").sort(ROW)

    def _minhash_reduce(self, partials: ray.data.Dataset, buckets: int) -> pl.DataFrame:
        """Band buckets by `groupby`, Jaccard verification in `map_batches`, components on the driver.

        The same result as `MinHashDedup.reduce` (which takes all band keys and all shingle sets on one
        node); the driver holds the nodes (row + tie-breaks) and the candidate pairs (16 bytes each).
        The equality test against LocalEngine guards the equivalence.
        """
        step = MinHashDedup(self._worker_cfg.dedup.minhash)
        band_rows = partials.map_batches(_band_rows, batch_format="pyarrow", batch_size=None,
                                         fn_args=(step.bands, buckets * step.bands))
        pair_ds = band_rows.groupby("_bucket", num_partitions=buckets).map_groups(
            _bucket_pairs, batch_format="pyarrow", fn_args=(step.cfg.max_bucket,)
        )
        nodes = pl.concat(list(_frames(partials.drop_columns(["_bands"]))), how="vertical").sort(ROW)
        files = sorted(f for f in nodes["_spill"].unique().to_list() if f)
        try:
            candidates = pl.concat([*_frames(pair_ds), pl.DataFrame(schema={"a": pl.Int64, "b": pl.Int64})])
            self._mark("minhash_dedup (verify)")
            verified = self._jaccard_pairs(candidates.unique(), files).sort("a", "b")
            self._mark("minhash_dedup (components, driver)")
            edges = verified.filter(pl.col("sim") >= step.cfg.threshold)
            row_arr = nodes[ROW].to_numpy()
            src, dst = (np.searchsorted(row_arr, edges[c].to_numpy()).astype(np.int64) for c in ("a", "b"))
            out = assign_clusters(nodes, src, dst, "near")
            to_rep = out.filter(pl.col(ROW) != pl.col("_rep_row")).select(pl.col(ROW).alias("a"),
                                                                          pl.col("_rep_row").alias("b"))
            jac = self._jaccard_pairs(to_rep, files)
            # Python's round, as the step rounds, so the annotation has the same bits
            jac = jac.select(pl.col("a").alias(ROW), pl.Series("near_jaccard", [round(x, 4) for x in jac["sim"]],
                                                                dtype=pl.Float64))
        finally:
            _remove_spill(files)
        out = out.join(jac, on=ROW, how="left", maintain_order="left")
        return out.drop("_rep_row").with_columns(nodes["near_input"], nodes["near_shingles"])

    def _mark(self, label: str) -> Any:
        """A progress task for a pass without a part count (also how bench/ times each pass)."""
        return self.progress.task(label, total=None) if self.progress else None

    def _jaccard_pairs(self, pairs: pl.DataFrame, files: list[str]) -> pl.DataFrame:
        """`a`, `b` and their exact Jaccard `sim`, computed in `map_batches` over chunks of the pairs."""
        if pairs.height == 0:
            return pairs.with_columns(pl.lit(None, dtype=pl.Float64).alias("sim"))
        chunk = max(20_000, math.ceil(pairs.height / (4 * self.workers)))
        tables = [pairs.slice(i, chunk).to_arrow() for i in range(0, pairs.height, chunk)]
        ds = ray.data.from_arrow(tables).map_batches(_verify_pairs, batch_format="pyarrow", batch_size=None,
                                                    fn_args=(files,), num_cpus=1)
        return pl.concat(list(_frames(ds)), how="vertical")

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


def _frames(ds: ray.data.Dataset) -> Iterable[pl.DataFrame]:
    """The dataset's blocks as Polars frames, streamed to the driver one block at a time."""
    for table in ds.iter_batches(batch_format="pyarrow", batch_size=None):
        yield pl.from_arrow(table)
