"""The Ray engine gives the local engine's results on sample_data, even when a worker dies mid-run."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pytest

from curator.cli import main
from curator.config import CurateConfig, InputSpec, load_config
from curator.engines.local import LocalEngine
from curator.engines.plan import build_steps
from curator.ingest.inputs import expand_inputs
from curator.record import RECORD_SCHEMA
from curator.steps.decontam import Decontaminate
from curator.steps.dedup import ExactDedup, MinHashDedup
from curator.steps.quality import Language

ray = pytest.importorskip("ray")

from curator.engines.ray import (  # noqa: E402
    RayEngine,
    _band_rows,
    _both_ways,
    _bucket_pairs,
    _checksum_rows,
    _labels,
    _large_star,
    _small_star,
    start_ray,
)

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "sample_data"
# Every kind of phase runs: ingest + map (normalize, quality, language), global (exact, MinHash, cluster
# merge), a map phase on kept rows (decontamination against GSM8K, which flags the GSM8K sample).
OVERRIDES = {
    "pii": {"enabled": False},
    "decontam": {"benchmarks": [{"name": "gsm8k", "path": str(SAMPLE / "gsm8k_train_400.jsonl")}]},
}
KILL_MARKERS = "CURATOR_TEST_KILL_DIR"


def _cfg(inputs: list[str]) -> CurateConfig:
    cfg = load_config(None, OVERRIDES)
    cfg.inputs = [InputSpec(path=p) for p in inputs]
    return cfg


def _digest(out: Path) -> dict[str, str]:
    files = sorted([*out.glob("kept/*.parquet"), *out.glob("dropped/*.parquet"), out / "quarantine.parquet"])
    return {str(f.relative_to(out)): hashlib.sha256(f.read_bytes()).hexdigest() for f in files}


def _die_once(marker: Path) -> None:
    """Kill this worker process the first time it gets here (the marker remembers across retries)."""
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return
    os.close(fd)
    os._exit(1)  # as an OOM kill would: no exception, no cleanup, the process is gone


class DyingExactDedup(ExactDedup):
    """ExactDedup whose map kills its worker once (a Ray task of a global phase)."""

    def map(self, batch: pl.DataFrame) -> pl.DataFrame:
        _die_once(Path(os.environ[KILL_MARKERS]) / "exact")
        return super().map(batch)


class DyingDecontaminate(Decontaminate):
    """Decontaminate whose batch call kills its worker once (a Ray Data actor of a map phase)."""

    def __call__(self, batch: pl.DataFrame) -> pl.DataFrame:
        _die_once(Path(os.environ[KILL_MARKERS]) / "decontam")
        return super().__call__(batch)


def dying_steps(cfg: CurateConfig) -> list:
    """The configured steps with exact dedup and decontamination replaced by their dying versions."""
    out = []
    for step in build_steps(cfg):
        if isinstance(step, ExactDedup):
            step = DyingExactDedup(step.cfg)
        elif isinstance(step, Decontaminate):
            step = DyingDecontaminate(cfg.decontam)
        out.append(step)
    return out


@pytest.fixture(scope="module")
def local_ray(tmp_path_factory: pytest.TempPathFactory):
    """A local Ray on 2 CPUs for this module; workers learn where the kill markers live."""
    markers = tmp_path_factory.mktemp("kill_markers")
    os.environ[KILL_MARKERS] = str(markers)  # inherited by the workers Ray starts below
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import this test file
    start_ray(num_cpus=2, object_store_mb=512)
    yield markers
    ray.shutdown()
    os.environ.pop(KILL_MARKERS, None)


def test_ray_matches_local_even_when_workers_die(local_ray: Path, tmp_path: Path) -> None:
    inputs = expand_inputs([str(SAMPLE)])
    local = LocalEngine(_cfg(inputs), tmp_path / "local", workers=1).run()
    # three inputs read at once, each by its own Ray task
    run = RayEngine(_cfg(inputs), tmp_path / "ray", num_cpus=2, step_factory=dying_steps, readers=3).run()
    # both deaths happened and Ray re-ran those tasks; the run reports each retry by part
    assert sorted(p.name for p in local_ray.iterdir()) == ["decontam", "exact"]
    assert any(k.startswith("global") for k in run.retries), run.retries
    assert any(k.startswith("map") for k in run.retries), run.retries
    # same kept ids, same drop reasons, same bytes
    for name in ("kept", "dropped"):
        a = pl.read_parquet(tmp_path / "local" / name / "*.parquet")
        b = pl.read_parquet(tmp_path / "ray" / name / "*.parquet")
        assert a["id"].to_list() == b["id"].to_list()
    dropped = pl.read_parquet(tmp_path / "ray" / "dropped" / "*.parquet")
    assert {"exact_duplicate", "near_duplicate", "contaminated"} <= set(dropped["drop_reason"].to_list())
    assert _digest(tmp_path / "local") == _digest(tmp_path / "ray")
    # MinHash and the cluster merge found edges and ran the distributed components (not a driver step)
    done = [json.loads(p.read_text()) for p in sorted((tmp_path / "ray" / "_work" / "global").glob("*.done.json"))]
    assert sum(d["component_rounds"] >= 2 for d in done) == 2, done
    # nothing lost, nothing doubled
    acct = run.accounting
    assert acct.as_dict() == local.accounting.as_dict()
    kept = pl.read_parquet(tmp_path / "ray" / "kept" / "*.parquet")
    rows = [*kept["row"].to_list(), *dropped["row"].to_list()]
    assert len(rows) == len(set(rows)) == acct.total_read - sum(acct.quarantined.values())


def test_a_killed_ray_run_resumes_to_the_local_bytes(local_ray: Path, tmp_path: Path) -> None:
    """SIGKILL the driver and its whole local Ray cluster after a global phase; a re-run finishes the job."""
    inputs = expand_inputs([str(SAMPLE)])
    LocalEngine(_cfg(inputs), tmp_path / "local", workers=1).run()
    out = tmp_path / "ray"
    code = (
        "import json\nfrom pathlib import Path\n"
        "from curator.config import InputSpec, load_config\nfrom curator.engines.ray import RayEngine\n"
        f"cfg = load_config(None, json.loads({json.dumps(OVERRIDES)!r}))\n"
        f"cfg.inputs = [InputSpec(path=p) for p in {inputs!r}]\n"
        f"RayEngine(cfg, Path({str(out)!r}), num_cpus=2).run()\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.Popen([sys.executable, "-c", code], start_new_session=True, env=env)
    done = out / "_work" / "global"
    deadline = time.monotonic() + 240
    while proc.poll() is None and time.monotonic() < deadline and not list(done.glob("*.done.json")):
        time.sleep(0.1)
    assert proc.poll() is None, "the run ended before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)  # the driver, its raylet, GCS and workers: nothing shuts down cleanly
    proc.wait()
    assert not (out / "kept").exists()
    RayEngine(_cfg(inputs), out, num_cpus=2).run()
    assert _digest(tmp_path / "local") == _digest(out)


def test_cli_engine_switch_gives_the_same_shards(local_ray: Path, tmp_path: Path, tiny_tokenizer_dir: Path) -> None:
    inputs = [str(SAMPLE / "pirate_training_set.jsonl"), str(SAMPLE / "self_instruct_user_oriented_150.jsonl")]
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("pii:\n  enabled: false\n")
    for engine in ("local", "ray"):
        assert main(["curate", *inputs, "--out", str(tmp_path / engine), "--config", str(cfg), "--workers", "2",
                     "--engine", engine]) == 0
        assert main(["pack", str(tmp_path / engine), "--out", str(tmp_path / f"{engine}-shards"), "--tokenizer",
                     str(tiny_tokenizer_dir), "--seq-len", "256", "--config", str(cfg)]) == 0
    assert _digest(tmp_path / "local") == _digest(tmp_path / "ray")
    reports = [json.loads((tmp_path / e / "report.json").read_text()) for e in ("local", "ray")]
    assert reports[0]["accounting"] == reports[1]["accounting"]
    shards = {e: sorted((tmp_path / f"{e}-shards").glob("*/*.parquet")) for e in ("local", "ray")}
    assert len(shards["local"]) >= 2
    assert [hashlib.sha256(f.read_bytes()).hexdigest() for f in shards["local"]] == [
        hashlib.sha256(f.read_bytes()).hexdigest() for f in shards["ray"]
    ]


def test_the_local_engine_never_imports_ray(tmp_path: Path) -> None:
    code = (
        "import sys\n"
        "from curator.cli import main\n"
        f"rc = main(['curate', {str(SAMPLE / 'pirate_training_set.jsonl')!r}, '--out', {str(tmp_path)!r},"
        " '--workers', '1'])\n"
        "assert rc == 0, rc\n"
        "assert 'ray' not in sys.modules, 'the local engine imported ray'\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]


def test_distributed_band_buckets_give_the_steps_candidate_pairs() -> None:
    """Band rows shuffled into buckets, paired per bucket = MinHashDedup.candidate_pairs on all rows."""
    lines = (SAMPLE / "fastchat_dummy_conversation_sharegpt.json").read_text()
    convs = json.loads(lines)
    records = []
    for i, conv in enumerate(convs):
        msgs = [{"role": "user" if t["from"] == "human" else "assistant", "content": t["value"]}
                for t in conv["conversations"]]
        records.append({"id": f"r{i}", "messages": msgs, "source": {"file": "f", "index": i, "line": None,
                        "format": "sharegpt"}})
    frame = pl.from_arrow(pa.Table.from_pylist(records, schema=RECORD_SCHEMA))
    frame = frame.with_columns(pl.int_range(0, frame.height, dtype=pl.Int64).alias("row"))
    cfg = load_config(None, {"dedup": {"minhash": {"max_bucket": 5}}}).dedup.minhash
    step = MinHashDedup(cfg)
    nodes = pl.concat([step.map(frame.slice(0, 250)), step.map(frame.slice(250))]).sort("row")
    expected = step.candidate_pairs(nodes)
    assert len(expected) > 100  # the fastchat sample repeats itself: many candidates, some buckets above 5
    bands = pl.from_arrow(_band_rows(nodes.to_arrow(), step.bands, 7))
    got = pl.concat(
        [pl.from_arrow(_bucket_pairs(g.to_arrow(), cfg.max_bucket)) for _, g in bands.group_by("_bucket")]
    ).unique().sort("a", "b")
    rows = nodes["row"].to_numpy()
    assert np.array_equal(np.stack([rows[expected[:, 0]], rows[expected[:, 1]]], axis=1), got.to_numpy())


def _components_by_rounds(a: np.ndarray, b: np.ndarray, buckets: int) -> tuple[dict[int, int], int]:
    """The engine's large-star/small-star rounds run in-process, each shuffle done by a Polars group_by."""

    def shuffle(frame: pl.DataFrame) -> list[pa.Table]:
        return [g.to_arrow() for _, g in frame.filter(pl.col("_bucket").is_not_null()).group_by("_bucket")]

    cur = pl.from_arrow(_both_ways(pl.DataFrame({"a": a, "b": b}), buckets))
    seen = None
    for rounds in range(1, 64):
        large = pl.concat([pl.from_arrow(_large_star(t, buckets)) for t in shuffle(cur)])
        cur = pl.concat([pl.from_arrow(_small_star(t, buckets)) for t in shuffle(large)])
        sums = pl.from_arrow(_checksum_rows(cur.to_arrow())).sum().row(0)
        if sums == seen:
            labels = pl.from_arrow(_labels(cur.to_arrow()))
            return dict(zip(labels["row"].to_list(), labels["_lab"].to_list(), strict=True)), rounds
        seen = sums
    raise AssertionError("no convergence")


@pytest.mark.parametrize("seed", range(6))
def test_distributed_components_match_scipy(seed: int) -> None:
    """Random graphs (and a long chain, the worst case for label propagation) in 1-4 buckets."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    rng = np.random.default_rng(seed)
    n = int(rng.integers(50, 600))
    a, b = rng.integers(0, n, n), rng.integers(0, n, n)
    a, b = np.r_[a[a != b], np.arange(0, n // 2 - 1)], np.r_[b[a != b], np.arange(1, n // 2)]
    labels, rounds = _components_by_rounds(a * 7 + 3, b * 7 + 3, buckets=1 + seed % 4)  # rows need not be dense
    _, comp = connected_components(coo_matrix((np.ones(len(a)), (a, b)), shape=(n, n)), directed=False)
    smallest = pl.DataFrame({"c": comp, "i": np.arange(n)}).select(pl.col("i").min().over("c"))["i"].to_numpy()
    got = np.array([labels.get(i * 7 + 3, i * 7 + 3) for i in range(n)])
    assert np.array_equal(got, smallest * 7 + 3)
    assert 2 <= rounds <= 12


class FailingLanguage(Language):
    """Language detection that fails on every record: every part of the first phase ends with zero rows."""

    def __call__(self, batch: pl.DataFrame) -> pl.DataFrame:
        if batch.height:
            raise RuntimeError("no language model today")
        return super().__call__(batch)


def failing_language_steps(cfg: CurateConfig) -> list:
    return [FailingLanguage(cfg.quality) if isinstance(s, Language) else s for s in build_steps(cfg)]


def test_ray_and_local_finish_when_no_row_reaches_dedup(local_ray: Path, tmp_path: Path) -> None:
    """Issue 16: every record quarantined or dropped before dedup, zero-row parts and partials, both engines."""
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"messages": [}\n{"messages": 5}\n')
    english = tmp_path / "english.jsonl"
    rows = [{"messages": [{"role": "user", "content": f"What is the capital of country number {i}?"},
                          {"role": "assistant", "content": f"The capital of country {i} is a fine old city."}]}
            for i in range(6)]
    english.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cases = [
        ("all_quarantined", [InputSpec(path=str(broken), format="openai")], {}),
        ("german_only_minhash", [InputSpec(path=str(english))],
         {"quality": {"languages": ["de"]}, "dedup": {"exact": {"enabled": False}}}),
    ]
    for name, inputs, extra in cases:
        cfg = load_config(None, {"pii": {"enabled": False}, **extra})
        cfg.inputs = inputs
        local = LocalEngine(cfg, tmp_path / f"{name}-local", workers=1).run()
        run = RayEngine(cfg, tmp_path / f"{name}-ray", num_cpus=2).run()
        assert run.accounting.as_dict() == local.accounting.as_dict()
        assert run.accounting.kept == 0 and run.accounting.total_read in (2, 6)
        assert _digest(tmp_path / f"{name}-local") == _digest(tmp_path / f"{name}-ray")
    # a map step that fails on every row: its rows are quarantined and the zero-row parts still carry
    # the step's columns, so dedup and the decision run on them
    cfg = load_config(None, {"pii": {"enabled": False}})
    cfg.inputs = [InputSpec(path=str(english))]
    run = RayEngine(cfg, tmp_path / "failing", num_cpus=2, step_factory=failing_language_steps).run()
    assert run.accounting.kept == 0 and sum(run.accounting.quarantined.values()) == 6
    assert "language failed on this record" in next(iter(run.accounting.quarantine_reasons))
