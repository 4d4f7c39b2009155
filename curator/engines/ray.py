"""The Ray engine: the local engine's plan, parts and step functions, run on a Ray cluster (extra `ray`).

Same steps, same `phases()` plan, same work-dir layout and the same per-part worker functions as
`curator.engines.local`, so kept/dropped/quarantine files are byte-identical to a local run with
the same input, config and seed. What changes is where the work runs:

- **Ingest**: readers stream each input on the driver (they are sequential: a record's `row` is its
  position in its input, and zip archives / OASST trees must be read in order); each batch of
  records goes to a Ray task that validates it, runs the first map phase and writes its part.
  Parsing is the cheap half (see BENCHMARKS.md, "Engines"), the steps are the expensive half.
- **Map phases**: a Ray Dataset of parts, `map_batches` with a callable class (steps built once
  per actor, e.g. spaCy for PII), one part per call, written with `curator.io.write_parquet`.
- **Exact dedup**: the map half in `map_batches`, then a shuffle by hash: `groupby` on a bucket of
  the content hash and the step's own `reduce` per bucket (equal hashes always share a bucket).
- **MinHash**: signatures and band keys in `map_batches` (shingle sets spill to the work dir, which
  must be shared storage on a real cluster); band buckets by `groupby` on (band, key) bucket, each
  bucket group emitting its candidate pairs. Verification by exact Jaccard and the connected
  components then run on the driver over the (row, tie-break) nodes and the candidate pairs: that
  needs ~100 bytes per record plus 16 bytes per candidate pair on the driver (100M records ~ 10 GB).
- **Other global steps** (cluster merge, semantic dedup): the map half in `map_batches`, their
  `reduce` on the driver (cluster merge holds row + ids: ~150 bytes per record).
- **Failures**: Ray retries a task or restarts an actor whose worker died; every part is written
  atomically under its own name, so a retry rewrites the same file: nothing lost, nothing doubled.
  Each attempt leaves a marker in `_work/attempts/`; the run reports the retries it counted.
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
from curator.io import write_json, write_parquet
from curator.pipeline import Accounting, Phase, build_steps, phases
from curator.steps.base import ROW, GlobalStep, Step
from curator.steps.dedup import ExactDedup, MinHashDedup, _jaccard, assign_clusters

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
    """Leave one marker per attempt at `key`: more than one marker means Ray retried it."""
    path = Path(attempts)
    path.mkdir(parents=True, exist_ok=True)
    (path / f"{key}.{uuid.uuid4().hex}").touch()


@ray.remote(max_retries=TASK_RETRIES, retry_exceptions=False)
def _remote_call(cfg_json: str, factory: StepFactory, attempts: str, key: str, fn: Callable[..., Any],
                 args: tuple[Any, ...]) -> Any:
    """A local-engine worker function run as a Ray task (used for ingest batches)."""
    _mark_attempt(attempts, key)
    _build_worker(cfg_json, factory)
    return fn(*args)


class _PartWorker:
    """`map_batches` callable: runs a local-engine worker function on each part named in the batch."""

    def __init__(self, cfg_json: str, factory: StepFactory, attempts: str, kind: str, phase: int,
                 pending: list[str]) -> None:
        _build_worker(cfg_json, factory)
        self.attempts, self.kind, self.phase, self.pending = attempts, kind, phase, pending

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list[str]]:
        results: list[str] = []
        for task_json in batch["task"]:
            task = json.loads(task_json)
            _mark_attempt(self.attempts, f"{self.kind}{self.phase:02d}-{Path(task['src']).name}")
            if self.kind == "map":
                n, quarantined = local._run_map_phase(self.phase, task["src"], task["dst"], self.pending)
                results.append(json.dumps({"rows": n, "quarantined": quarantined}, default=str))
            else:
                stats = local._final_part(task["src"], self.pending, task["kept"], task["dropped"])
                results.append(json.dumps(stats))
        return {"result": results}


class _GlobalMapWorker:
    """`map_batches` callable: the map half of a global step on each part; emits the partial rows."""

    def __init__(self, cfg_json: str, factory: StepFactory, attempts: str, phase: int, pending: list[str]) -> None:
        _build_worker(cfg_json, factory)
        self.attempts, self.phase, self.pending = attempts, phase, pending

    def __call__(self, batch: pa.Table) -> pa.Table:
        frames = []
        for src in batch.column("src").to_pylist():
            _mark_attempt(self.attempts, f"global{self.phase:02d}-{Path(src).name}")
            frames.append(local._run_global_map(self.phase, src, self.pending))
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
    bucket = ((pl.col("_key") >> 1).cast(pl.Int64) + pl.col("_band")) % buckets
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
        key = f"{fn.__name__}-{Path(str(args[-1])).name}"
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
            # every worker spills shingle sets where the driver can read them back for verification
            self._worker_cfg.dedup.minhash.spill_dir = str(self.work / "minhash_spill")
        self._cfg_json = self._worker_cfg.model_dump_json()

    def run(self, fresh: bool = False) -> RayRunOutput:
        """Start or join Ray, then run the local engine's plan with Ray doing the work; count retries."""
        start_ray(self.address, self.num_cpus, self.object_store_mb)
        self.workers = max(1, int(ray.available_resources().get("CPU", 1)))
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

    def _run_parts(self, label: str, kind: str, phase: int, pending: list[str], tasks: list[dict[str, str]]
                   ) -> Iterator[dict[str, Any]]:
        """Run `_PartWorker` over the tasks with `map_batches`, yielding each part's result as it lands."""
        ds = self._dataset([{"task": json.dumps(t)} for t in tasks]).map_batches(
            _PartWorker,
            fn_constructor_args=(self._cfg_json, self.step_factory, str(self.attempts), kind, phase, pending),
            batch_size=1,
            concurrency=(1, self.workers),
            num_cpus=1,
        )
        task = self.progress.task(label, total=len(tasks)) if self.progress else None
        for row in ds.iter_rows():
            if task is not None:
                self.progress.advance(task, 1)
            yield json.loads(row["result"])

    def _map_phase(
        self, pool: Executor, phase: Phase, parts: list[Path], pending: list[str]
    ) -> tuple[list[Path], list[dict[str, Any]]]:
        out_dir = self.work / f"phase{phase.index:02d}"
        done_path = out_dir / "done.json"
        new_parts = [out_dir / p.name for p in parts]
        if done_path.exists():
            return new_parts, json.loads(done_path.read_text())["quarantined"]
        todo = [{"src": str(p), "dst": str(n)} for p, n in zip(parts, new_parts, strict=True) if not n.exists()]
        quarantined: list[dict[str, Any]] = []
        for result in self._run_parts(phase.name, "map", phase.index, pending, todo) if todo else ():
            quarantined.extend(result["quarantined"])
        quarantined = self._phase_quarantine(parts, new_parts, quarantined)
        write_json({"quarantined": quarantined}, done_path)
        return new_parts, json.loads(done_path.read_text())["quarantined"]

    def _global(self, pool: Executor, phase: Phase, parts: list[Path], pending: list[str]) -> Path:
        path = self.work / "global" / f"phase{phase.index:02d}.parquet"
        if path.exists():
            return path
        step: GlobalStep = phase.steps[0]  # type: ignore[assignment]
        partials = self._dataset([{"src": str(p)} for p in parts]).map_batches(
            _GlobalMapWorker,
            fn_constructor_args=(self._cfg_json, self.step_factory, str(self.attempts), phase.index, pending),
            batch_size=1,
            batch_format="pyarrow",
            concurrency=(1, self.workers),
            num_cpus=1,
        ).materialize()
        task = self.progress.task(f"{phase.name} (shuffle + reduce)", total=None) if self.progress else None
        n_rows = partials.count()
        buckets = max(self.workers, math.ceil(n_rows / ROWS_PER_BUCKET))
        if n_rows and isinstance(step, ExactDedup):
            annotation = self._exact_reduce(step, partials, buckets)
        elif n_rows and isinstance(step, MinHashDedup):
            step._clear_spill()  # the driver's own instance spilled nothing: the workers' spill is shared
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
        reduced = shuffled.groupby("_bucket").map_groups(_reduce_bucket, batch_format="pyarrow", fn_args=(step,))
        return pl.concat(list(_frames(reduced)), how="vertical").sort(ROW)

    def _minhash_reduce(self, partials: ray.data.Dataset, buckets: int) -> pl.DataFrame:
        """Band buckets by `groupby` on the cluster; Jaccard verification and components on the driver.

        Mirrors the tail of `MinHashDedup.reduce` (which takes all band keys on one node) with the
        candidate pairs computed distributed; the equality test against LocalEngine guards it.
        """
        step = MinHashDedup(self._worker_cfg.dedup.minhash)
        band_rows = partials.map_batches(_band_rows, batch_format="pyarrow", batch_size=None,
                                         fn_args=(step.bands, buckets * step.bands))
        pair_ds = band_rows.groupby("_bucket").map_groups(
            _bucket_pairs, batch_format="pyarrow", fn_args=(step.cfg.max_bucket,)
        )
        nodes = pl.concat(list(_frames(partials.drop_columns(["_bands"]))), how="vertical").sort(ROW)
        pairs_frame = pl.concat([*_frames(pair_ds), pl.DataFrame(schema={"a": pl.Int64, "b": pl.Int64})])
        pairs_rows = pairs_frame.unique().sort("a", "b")
        row_arr = nodes[ROW].to_numpy()
        pairs = np.stack(
            [np.searchsorted(row_arr, pairs_rows[c].to_numpy()) for c in ("a", "b")], axis=1
        ).astype(np.int64)
        try:
            sets = step._load_sets(pl.Series(ROW, np.unique(row_arr[pairs.ravel()]), dtype=pl.Int64))
            sim = np.array([_jaccard(sets[row_arr[i]], sets[row_arr[j]]) for i, j in pairs], dtype=np.float64)
            keep = sim >= step.cfg.threshold
            out = assign_clusters(nodes, pairs[keep, 0], pairs[keep, 1], "near")
            jac = [
                None if rep == r else round(_jaccard(sets[r], sets[rep]), 4)
                for r, rep in zip(out[ROW], out["_rep_row"], strict=True)
            ]
        finally:
            step._clear_spill()
        return out.drop("_rep_row").with_columns(
            pl.Series("near_jaccard", jac, dtype=pl.Float64), nodes["near_input"], nodes["near_shingles"]
        )

    def _final(
        self, pool: Executor, parts: list[Path], pending: list[str], acct: Accounting
    ) -> tuple[list[Path], list[Path]]:
        kept_dir, dropped_dir = self.out / "kept", self.out / "dropped"
        for d in (kept_dir, dropped_dir):
            shutil.rmtree(d, ignore_errors=True)
            d.mkdir(parents=True)
        os.chmod(dropped_dir, 0o700)
        kept = [kept_dir / p.name for p in parts]
        dropped = [dropped_dir / p.name for p in parts]
        tasks = [
            {"src": str(p), "kept": str(k), "dropped": str(d)} for p, k, d in zip(parts, kept, dropped, strict=True)
        ]
        for stats in self._run_parts("decide", "final", 0, pending, tasks) if tasks else ():
            acct.kept += stats["kept"]
            acct.dropped.update(stats["dropped"])
        return kept, dropped


def _frames(ds: ray.data.Dataset) -> Iterable[pl.DataFrame]:
    """The dataset's blocks as Polars frames, streamed to the driver one block at a time."""
    for table in ds.iter_batches(batch_format="pyarrow", batch_size=None):
        yield pl.from_arrow(table)
