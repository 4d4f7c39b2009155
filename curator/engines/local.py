"""The in-process engine: streams inputs into Parquet parts, runs each phase over the parts, resumes.

Work-dir layout (`OUT/_work`):
    state.json                     config hash + inputs; a different config refuses to resume
    ingest/i0003-b000012.parquet   ingested + map-stepped batch 12 of input 3 (atomic)
    ingest/i0003.done.json         input 3 fully read: its counts (written after its last part)
    quarantine/i0003.parquet       input 3's quarantine rows (raw excerpts: owner-only)
    phase02/<part>.parquet         parts after map phase 2 (annotations of global phases folded in)
    global/phase01.parquet         annotation table of global phase 1, keyed by `row`
Every file is written atomically and named by position, so a killed run re-run with the same
arguments skips what exists and rewrites the rest to the same names: nothing is lost or doubled.
The work dir is owner-only (0700) from its creation, and every file and dir below it inherits that
(`curator.io`): its parts hold raw, unscrubbed records. A run that completes deletes them
(`remove_raw_parts`), keeping only `state.json` and the small `*.done.json` notes of global phases.
Map work goes to a process pool (`workers`); each worker builds its own steps from the config once.
"""

from __future__ import annotations

import json
import multiprocessing
import re
import shutil
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa

from curator.config import CurateConfig, config_hash
from curator.engines.plan import ROW_SHIFT, Accounting, Phase, ResumeMismatch, all_rules, build_steps, kept_mask, phases
from curator.ingest import MessageTally, read_input
from curator.ingest.base import Note, Quarantined
from curator.ingest.inputs import reader_options
from curator.io import make_dirs, private_dir, write_json, write_parquet
from curator.record import RECORD_SCHEMA, is_valid_record, schema_errors
from curator.steps.base import DROP_DETAIL, DROP_REASON, ROW, GlobalStep, Step, decide

SENSITIVE = 0o600  # raw excerpts and dropped records may hold PII: owner-only
SPILL_DIR = "minhash_spill"  # under the work dir: MinHash shingle sets waiting for verification
ANNOTATION_ROW_GROUP = 16_384  # rows per Parquet row group of an annotation (~2 parts of 8192)
QUARANTINE_SCHEMA = pa.schema(
    [
        (ROW, pa.int64()),
        ("file", pa.string()),
        ("index", pa.int64()),
        ("line", pa.int64()),
        ("field", pa.string()),
        ("reason", pa.string()),
        ("excerpt", pa.string()),
    ]
)


# ---------------------------------------------------------------- worker side (runs in the pool)

_STEPS: list[Any] = []
_PHASES: list[Phase] = []


def _init_worker(cfg_json: str) -> None:
    """Build the steps once per worker process (models such as spaCy load here, not per batch)."""
    _use_steps(build_steps(CurateConfig.model_validate_json(cfg_json)))


def _use_steps(steps: list[Any]) -> None:
    """The steps and phase plan the worker-side functions run in this process."""
    global _STEPS, _PHASES
    _STEPS = steps
    _PHASES = phases(steps)


def _quarantine_rows(frame: pl.DataFrame, reason: str) -> list[dict[str, Any]]:
    sources = frame["source"].to_list()
    return [
        {ROW: row, "file": s["file"], "index": s["index"], "line": s["line"], "field": None, "reason": reason,
         "excerpt": ""}
        for row, s in zip(frame[ROW].to_list(), sources, strict=True)
    ]


def _apply_map_steps(frame: pl.DataFrame, steps: list[Any]) -> tuple[pl.DataFrame, list[dict[str, Any]]]:
    """Run map steps on a batch; a batch that fails is retried row by row and failing rows quarantined."""
    try:
        for step in steps:
            frame = step(frame)
        return frame, []
    except Exception:  # a step bug or an input it cannot handle: isolate the rows, never stop the run
        good: list[pl.DataFrame] = []
        bad: list[dict[str, Any]] = []
        for i in range(frame.height):
            one = frame.slice(i, 1)
            name = "step"
            try:
                for step in steps:
                    name = step.name  # the step that fails is the one the reason names
                    one = step(one)
                good.append(one)
            except Exception as exc:
                row = frame.slice(i, 1)
                bad.extend(_quarantine_rows(row, f"{name} failed on this record: {type(exc).__name__}: {exc}"[:300]))
        out = pl.concat(good, how="diagonal_relaxed") if good else _no_rows(frame, steps)
        return out, bad


def _no_rows(frame: pl.DataFrame, steps: list[Any]) -> pl.DataFrame:
    """A zero-row batch with the columns the steps add (every step handles zero rows), so later rules
    and joins find their columns even when every row of a part was quarantined."""
    empty = frame.clear()
    for step in steps:
        empty = step(empty)
    return empty


def _load_part(path: Path, pending: list[str]) -> pl.DataFrame:
    """A part with the annotation tables of not-yet-folded global phases joined on `row`.

    An annotation is one Parquet file or a directory of them (the Ray engine writes one per row
    range), sorted by row in small row groups: the scan reads only the groups overlapping this part.
    """
    frame = pl.read_parquet(path)
    # a zero-row part still gets the annotation columns (no rows match), so later rules find them
    rows = pl.col(ROW).is_between(frame[ROW].min(), frame[ROW].max()) if frame.height else pl.lit(False)
    for ann_path in pending:
        source = f"{ann_path}/*.parquet" if Path(ann_path).is_dir() else ann_path
        part_ann = pl.scan_parquet(source).filter(rows).collect()
        frame = frame.join(part_ann, on=ROW, how="left", maintain_order="left")
    return frame


def _run_map_phase(
    phase_index: int, src: str, dst: str, pending: list[str]
) -> tuple[int, list[dict[str, Any]]]:
    """Worker task: load a part, run the phase's map steps on still-kept rows, write the new part."""
    phase = _PHASES[phase_index]
    frame = _load_part(Path(src), pending)
    frame = decide(frame, phase.rules_before)
    quarantined: list[dict[str, Any]] = []
    if phase.steps[0].only_kept:
        mask = kept_mask(frame)
        done, quarantined = _apply_map_steps(frame.filter(mask), phase.steps)
        frame = pl.concat([done, frame.filter(~mask)], how="diagonal_relaxed").sort(ROW)
    else:
        frame, quarantined = _apply_map_steps(frame, phase.steps)
    write_parquet(frame.drop([DROP_REASON, DROP_DETAIL]), Path(dst))
    return frame.height, quarantined


def _run_global_map(phase_index: int, src: str, pending: list[str]) -> pl.DataFrame:
    """Worker task: the map half of a global step on one part (only on still-kept rows if it asks)."""
    phase = _PHASES[phase_index]
    frame = decide(_load_part(Path(src), pending), phase.rules_before)
    if phase.steps[0].only_kept:
        frame = frame.filter(kept_mask(frame))
    return phase.steps[0].map(frame)


def _ingest_batch(
    items: list[Any], rows: list[int], dst: str, file: str, category: str | None, override: bool
) -> tuple[int, list[dict[str, Any]]]:
    """Worker task: validate a batch of reader output, set the input's category, write it as a part
    after the first (map) phase. A record that fails record.schema.json is quarantined (a reader bug
    must not stop the run); validating here keeps the driver free to read."""
    records: list[dict[str, Any]] = []
    good_rows: list[int] = []
    quarantined: list[dict[str, Any]] = []
    for item, row in zip(items, rows, strict=True):
        if not is_valid_record(item):
            problems = "; ".join(schema_errors(item)[:3]) or "not a record"
            src = (item.get("source") or {}) if isinstance(item, dict) else {}
            quarantined.append(
                {ROW: row, "file": file, "index": src.get("index"), "line": src.get("line"), "field": None,
                 "reason": f"record does not match record.schema.json: {problems}", "excerpt": ""}
            )
            continue
        if category and (override or not item.get("category")):
            item = {**item, "category": category}
        records.append(item)
        good_rows.append(row)
    table = pa.Table.from_pylist(records, schema=RECORD_SCHEMA)
    frame = pl.from_arrow(table).with_columns(pl.Series(ROW, good_rows, dtype=pl.Int64))
    first = _PHASES[0]
    if not first.is_global and not first.steps[0].only_kept:  # a zero-row batch too: it gets the columns
        frame, failed = _apply_map_steps(frame, first.steps)
        quarantined.extend(failed)
    write_parquet(frame, Path(dst))
    return frame.height, quarantined


def _final_part(src: str, pending: list[str], kept_dst: str, dropped_dst: str) -> dict[str, Any]:
    """Worker task: decide every rule on a part and write its kept and dropped rows."""
    frame = decide(_load_part(Path(src), pending), all_rules(_STEPS))
    mask = kept_mask(frame)
    kept = frame.filter(mask).drop([DROP_REASON, DROP_DETAIL])
    dropped = frame.filter(~mask)
    write_parquet(kept, Path(kept_dst))
    write_parquet(dropped, Path(dropped_dst), mode=SENSITIVE)
    return {
        "kept": kept.height,
        "dropped": dict(Counter(dropped[DROP_REASON].to_list())),
    }


# ---------------------------------------------------------------- driver side


@dataclass
class RunOutput:
    """What a finished run produced, for the report and the CLI's summary table."""

    out: Path
    accounting: Accounting
    steps: list[Any]
    kept_parts: list[Path]
    dropped_parts: list[Path]
    quarantine_path: Path
    phase_rows: list[tuple[str, int]] = field(default_factory=list)
    notes: dict[str, list[str]] = field(default_factory=dict)  # input -> what its reader decided (Note)


def ingest_input(cfg: CurateConfig, i: int, work: Path, pool: Executor, workers: int, progress: Any) -> dict[str, Any]:
    """Stream input `i` into batches for the pool (validate + first phase + write a part each); write its
    quarantine. Returns {read, parts, quarantined, notes} (+ `messages`, the message accounting of a chat
    export). Runs on the driver, or as a Ray task per input."""
    spec = cfg.inputs[i]
    ingest_dir = work / "ingest"
    items = read_input(Path(spec.path), spec.path, spec.format, reader_options(cfg, i))
    batch_size = cfg.ingest.batch_size
    quarantine: list[dict[str, Any]] = []
    names: list[str] = []
    futures: list[Future[Any]] = []
    records: list[dict[str, Any]] = []
    rows: list[int] = []
    notes: list[str] = []
    read = 0
    messages: MessageTally | None = None
    task = progress.task(f"ingest {spec.path}", total=None) if progress else None

    def flush() -> None:
        name = f"i{i:04d}-b{len(names):06d}.parquet"
        names.append(name)
        futures.append(pool.submit(_ingest_batch, list(records), list(rows), str(ingest_dir / name), spec.path,
                                   spec.category, spec.override_category))
        records.clear()
        rows.clear()
        while len([f for f in futures if not f.done()]) > 2 * max(workers, 1):
            futures[[f.done() for f in futures].index(False)].result()

    for item in items:
        if isinstance(item, MessageTally):  # a chat export's message accounting: not a record
            messages = item
            continue
        if isinstance(item, Note):  # about the input, not a record: not counted
            notes.append(item.message)
            continue
        row = (i << ROW_SHIFT) | read
        read += 1
        if isinstance(item, Quarantined):
            quarantine.append({ROW: row, **item.__dict__, "excerpt": item.excerpt})
        else:
            records.append(item)
            rows.append(row)
            if len(records) >= batch_size:
                flush()
        if task is not None and read % 1000 == 0:
            progress.advance(task, 1000)
    if records:
        flush()
    for fut in futures:
        _, extra = fut.result()
        quarantine.extend(extra)
    q_path = work / "quarantine" / f"i{i:04d}.parquet"
    write_parquet(pa.Table.from_pylist(quarantine, schema=QUARANTINE_SCHEMA), q_path, mode=SENSITIVE)
    if task is not None:
        progress.finish(task, read)
    done: dict[str, Any] = {"read": read, "parts": names, "quarantined": len(quarantine), "notes": notes}
    if messages is not None:
        done["messages"] = messages.as_dict()
    return done


class _InlineExecutor(Executor):
    """Runs tasks in this process: for `workers=1`, tests and debugging (same code path as the pool)."""

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        fut: Future[Any] = Future()
        try:
            fut.set_result(fn(*args, **kwargs))
        except BaseException as exc:
            fut.set_exception(exc)
        return fut


class LocalEngine:
    """Run a `CurateConfig` over its inputs on this machine, with `workers` processes."""

    def __init__(self, cfg: CurateConfig, out: Path, *, workers: int = 1, progress: Any = None) -> None:
        self.cfg = cfg
        self.out = out
        self.work = out / "_work"
        self.workers = workers
        self.progress = progress  # a curator.report.progress.Progress-like object, or None
        self._worker_cfg = cfg.model_copy(deep=True)  # what the workers build their steps from
        if cfg.dedup.minhash.enabled and cfg.dedup.minhash.spill_dir is None:
            # shingle sets spill under the work dir: a killed run's spill is found (and removed) on resume,
            # and on Ray the verification tasks of any node read them back from there
            self._worker_cfg.dedup.minhash.spill_dir = str(self.work / SPILL_DIR)
        self._cfg_json = self._worker_cfg.model_dump_json()

    def _state(self) -> dict[str, Any]:
        return {"config_hash": config_hash(self.cfg), "inputs": [i.model_dump() for i in self.cfg.inputs]}

    def prepare(self, fresh: bool) -> None:
        """Start a new work dir, or check that the existing one belongs to the same run."""
        state_path = self.work / "state.json"
        if fresh and self.out.exists():
            shutil.rmtree(self.work, ignore_errors=True)
        private_dir(self.work)  # before the first raw record is written into it
        if state_path.exists():
            old = json.loads(state_path.read_text())
            if old != self._state():
                raise ResumeMismatch(
                    f"{self.out} holds a run made with a different config or inputs; "
                    "re-run with --fresh to replace it, or choose another --out"
                )
            self._remove_leftovers()
        else:
            write_json(self._state(), state_path)

    def _remove_leftovers(self) -> None:
        """Delete what a killed run left half-done: temp files of unfinished atomic writes, and the
        MinHash spill (a phase that did not finish runs again from its map, which spills anew)."""
        for tmp in [*self.work.rglob(".*.tmp"), *self.out.glob(".*.tmp")]:
            tmp.unlink(missing_ok=True)
        shutil.rmtree(self.work / SPILL_DIR, ignore_errors=True)

    def _executor(self, steps: list[Step]) -> Executor:
        if self.workers <= 1:
            _use_steps(steps)  # in this process: the driver's steps, so PII and embedding models load once
            return _InlineExecutor()
        # spawn, not fork: polars and torch start thread pools, and a forked child can deadlock on their locks
        return ProcessPoolExecutor(
            max_workers=self.workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_init_worker,
            initargs=(self._cfg_json,),
        )

    def run(self, fresh: bool = False) -> RunOutput:
        """Ingest, run every phase, decide, and write kept/dropped/quarantine with reconciled counts."""
        self.prepare(fresh)
        steps = build_steps(self.cfg)
        plan = phases(steps)
        acct = Accounting()
        with self._executor(steps) as pool:
            parts, quarantine = self._ingest(pool, acct)
            pending: list[str] = []
            start = 1 if plan and not plan[0].is_global and not plan[0].steps[0].only_kept else 0
            phase_rows: list[tuple[str, int]] = [("ingest", sum(1 for _ in parts))]
            for phase in plan[start:]:
                if phase.is_global:
                    pending.append(str(self._global(pool, phase, parts, pending)))
                else:
                    parts, extra = self._map_phase(pool, phase, parts, pending)
                    quarantine.extend(extra)
                    pending = []
                phase_rows.append((phase.name, len(parts)))
            kept_parts, dropped_parts = self._final(pool, parts, pending, acct)
        notes = self._notes()
        for row in quarantine:
            # by input, not row["file"]: a zip member or a chat export's day file is not an input path
            acct.quarantined[self.cfg.inputs[row[ROW] >> ROW_SHIFT].path] += 1
            acct.quarantine_reasons[_reason_kind(row["reason"], row.get("field"))] += 1
        quarantine_path = self.out / "quarantine.parquet"
        table = pa.Table.from_pylist(sorted(quarantine, key=lambda r: r[ROW]), schema=QUARANTINE_SCHEMA)
        write_parquet(table, quarantine_path, mode=SENSITIVE)
        acct.check()
        remove_raw_parts(self.work)
        return RunOutput(self.out, acct, steps, kept_parts, dropped_parts, quarantine_path, phase_rows, notes)

    # -- ingest

    def _ingest(self, pool: Executor, acct: Accounting) -> tuple[list[Path], list[dict[str, Any]]]:
        """Read every input not yet done (`_read_inputs`), then gather parts and quarantine in input order."""
        ingest_dir = make_dirs(self.work / "ingest")
        todo = [i for i in range(len(self.cfg.inputs)) if not (ingest_dir / f"i{i:04d}.done.json").exists()]
        for i in todo:
            for stale in ingest_dir.glob(f"i{i:04d}-*.parquet"):
                stale.unlink()
        for i, done in self._read_inputs(pool, todo):
            write_json(done, ingest_dir / f"i{i:04d}.done.json")  # after its last part: the input is complete
        parts: list[Path] = []
        quarantine: list[dict[str, Any]] = []
        for i, spec in enumerate(self.cfg.inputs):
            done = json.loads((ingest_dir / f"i{i:04d}.done.json").read_text())
            parts.extend(ingest_dir / name for name in done["parts"])
            acct.read[spec.path] += done["read"]
            if "messages" in done:
                acct.messages[spec.path] = done["messages"]
            quarantine.extend(pl.read_parquet(self.work / "quarantine" / f"i{i:04d}.parquet").to_dicts())
        return parts, quarantine

    def _notes(self) -> dict[str, list[str]]:
        """What the readers decided about whole inputs (e.g. a CSV without a header row), by input."""
        out: dict[str, list[str]] = {}
        for i, spec in enumerate(self.cfg.inputs):
            done = json.loads((self.work / "ingest" / f"i{i:04d}.done.json").read_text())
            if done.get("notes"):
                out.setdefault(spec.path, []).extend(done["notes"])
        return out

    def _read_inputs(self, pool: Executor, todo: list[int]) -> Iterator[tuple[int, dict[str, Any]]]:
        """Read the inputs one after another in this process; their batches go to the pool."""
        for i in todo:
            yield i, ingest_input(self.cfg, i, self.work, pool, self.workers, self.progress)


    # -- phases

    def _map_phase(
        self, pool: Executor, phase: Phase, parts: list[Path], pending: list[str]
    ) -> tuple[list[Path], list[dict[str, Any]]]:
        out_dir = self.work / f"phase{phase.index:02d}"
        done_path = out_dir / "done.json"
        new_parts = [out_dir / p.name for p in parts]
        if done_path.exists():
            return new_parts, json.loads(done_path.read_text())["quarantined"]
        todo = [(p, n) for p, n in zip(parts, new_parts, strict=True) if not n.exists()]
        quarantined = self._run_map_tasks(pool, phase, todo, pending) if todo else []
        # rows quarantined in parts finished by an earlier, killed run are found again from the parts
        write_json({"quarantined": self._phase_quarantine(parts, new_parts, quarantined)}, done_path)
        return new_parts, json.loads(done_path.read_text())["quarantined"]

    def _run_map_tasks(
        self, pool: Executor, phase: Phase, todo: list[tuple[Path, Path]], pending: list[str]
    ) -> list[dict[str, Any]]:
        """Run a map phase on the (source, destination) parts still to do; returns rows it quarantined."""
        futs = [pool.submit(_run_map_phase, phase.index, str(p), str(n), pending) for p, n in todo]
        return [row for _, extra in self._track(phase.name, futs) for row in extra]

    @staticmethod
    def _phase_quarantine(
        before: list[Path], after: list[Path], found: list[dict[str, Any]]
    ) -> list[dict[str, Any]]:
        """Rows present before a map phase and missing after it: quarantined by that phase."""
        by_row = {r[ROW]: r for r in found}
        missing: list[dict[str, Any]] = []
        for src, dst in zip(before, after, strict=True):
            old = pl.read_parquet(src, columns=[ROW, "source"])
            new_rows = set(pl.read_parquet(dst, columns=[ROW])[ROW].to_list())
            gone = old.filter(~pl.col(ROW).is_in(list(new_rows)))
            for row in _quarantine_rows(gone, "map step failed on this record"):
                missing.append(by_row.get(row[ROW], row))
        return missing

    def _global(self, pool: Executor, phase: Phase, parts: list[Path], pending: list[str]) -> Path:
        path = self.work / "global" / f"phase{phase.index:02d}.parquet"
        if path.exists():
            return path
        step: GlobalStep = phase.steps[0]  # type: ignore[assignment]
        futs = [pool.submit(_run_global_map, phase.index, str(p), pending) for p in parts]
        partials = list(self._track(f"{phase.name} (map)", futs))
        annotation = step.reduce(partials)
        write_parquet(annotation.sort(ROW), path, row_group_size=ANNOTATION_ROW_GROUP)
        return path

    def _output_paths(self, parts: list[Path]) -> tuple[list[Path], list[Path]]:
        """Fresh kept/ and dropped/ dirs (dropped/ owner-only: it may hold raw text) and a path per part."""
        kept_dir, dropped_dir = self.out / "kept", self.out / "dropped"
        for d in (kept_dir, dropped_dir):
            shutil.rmtree(d, ignore_errors=True)
        kept_dir.mkdir(parents=True)
        private_dir(dropped_dir)
        return [kept_dir / p.name for p in parts], [dropped_dir / p.name for p in parts]

    def _final(
        self, pool: Executor, parts: list[Path], pending: list[str], acct: Accounting
    ) -> tuple[list[Path], list[Path]]:
        kept, dropped = self._output_paths(parts)
        futs = [
            pool.submit(_final_part, str(p), pending, str(k), str(d))
            for p, k, d in zip(parts, kept, dropped, strict=True)
        ]
        for stats in self._track("decide", futs):
            acct.kept += stats["kept"]
            acct.dropped.update(stats["dropped"])
        return kept, dropped

    def _track(self, label: str, futures: list[Future[Any]]) -> Iterator[Any]:
        task = self.progress.task(label, total=len(futures)) if self.progress else None
        for fut in futures:
            result = fut.result()
            if task is not None:
                self.progress.advance(task, 1)
            yield result


KEPT_AFTER_RUN = ("state.json", "attempts")  # no record text: the config hash and Ray's retry markers


def remove_raw_parts(work: Path) -> None:
    """Delete what a finished run no longer needs and what may hold raw text: parts, quarantine
    rows, annotations, spills. Kept: `KEPT_AFTER_RUN` and the `global/*.done.json` notes."""
    for child in work.iterdir():
        if child.name in KEPT_AFTER_RUN:
            continue
        if child.name == "global" and child.is_dir():
            for item in child.iterdir():
                if not item.name.endswith(".done.json"):
                    shutil.rmtree(item) if item.is_dir() else item.unlink()
        elif child.is_dir():
            shutil.rmtree(child)
        else:
            child.unlink()


def _reason_kind(reason: str, field: str | None = None) -> str:
    """The reason without its instance details, for counting by kind: quoted values and numbers go,
    quoted field names (those in the row's `field`) stay, so "'messages' is empty" stays readable."""

    names = {field, *re.split(r"[.\[\]]+", field)} - {""} if field else set()

    def quoted(m: re.Match[str]) -> str:
        return m.group(0) if m.group(0)[1:-1] in names else "'…'"

    kind = re.sub(r"'[^']*'|\"[^\"]*\"", quoted, reason)
    return re.sub(r"\d+(\.\d+)?", "N", kind)[:120]
