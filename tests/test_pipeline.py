"""The curation run end to end on sample_data: reconciliation, determinism, resume after a kill."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest

from curator.cli import main
from curator.config import InputSpec, load_config
from curator.engines.local import LocalEngine, _apply_map_steps
from curator.ingest.inputs import expand_inputs
from curator.steps.normalize import Normalize

ROOT = Path(__file__).resolve().parent.parent
FAST = {"pii": {"enabled": False}, "dedup": {"minhash": {"enabled": False}}}


def _cfg(inputs: list[str], **overrides):
    cfg = load_config(None, {**FAST, **overrides})
    cfg.inputs = [InputSpec(path=p) for p in inputs]
    return cfg


def _digest(out: Path) -> dict[str, str]:
    """sha256 of every data output (kept, dropped, quarantine), by relative path."""
    files = sorted([*out.glob("kept/*.parquet"), *out.glob("dropped/*.parquet"), out / "quarantine.parquet"])
    return {str(f.relative_to(out)): hashlib.sha256(f.read_bytes()).hexdigest() for f in files}


def _bad_jsonl(path: Path) -> Path:
    """Real OpenAI-format lines with real-world damage mixed in."""
    good = (ROOT / "sample_data" / "pirate_training_set.jsonl").read_bytes().splitlines()
    lines = [
        good[0],
        b'{"messages": [{"role": "user", "content": "unterminated',
        good[1],
        b'{"messages": [{"role": "wizard", "content": "hi"}, {"role": "assistant", "content": "x"}]}',
        b'{"messages": [{"role": "user", "content": 42}, {"role": "assistant", "content": "x"}]}',
        b'{"messages": [{"role": "user", "content": "caf\xe9 au lait"}, {"role": "assistant", "content": "ok"}]}',
        good[2],
        b'{"messages": [{"role": "user", "content": ""}, {"role": "assistant", "content": "Nothing asked."}]}',
    ]
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def test_sample_data_reconciles_and_reports(tmp_path: Path) -> None:
    inputs = expand_inputs([str(ROOT / "sample_data")])
    bad = _bad_jsonl(tmp_path / "damaged.jsonl")
    out = tmp_path / "out"
    assert main(["curate", *inputs, str(bad), "--out", str(out), "--workers", "1", "--config",
                 str(_write_cfg(tmp_path))]) == 0
    report = json.loads((out / "report.json").read_text())
    acct = report["accounting"]
    assert acct["read"] == acct["kept"] + acct["dropped"] + acct["quarantined"]
    kept = pl.read_parquet(out / "kept" / "*.parquet")
    dropped = pl.read_parquet(out / "dropped" / "*.parquet")
    quarantine = pl.read_parquet(out / "quarantine.parquet")
    assert (kept.height, dropped.height, quarantine.height) == (acct["kept"], acct["dropped"], acct["quarantined"])
    # every row is accounted for exactly once
    rows = [*kept["row"].to_list(), *dropped["row"].to_list(), *quarantine["row"].to_list()]
    assert len(rows) == len(set(rows)) == acct["read"]
    # the damaged file: 3 structurally bad lines quarantined with their line numbers, the empty turn dropped
    damaged = quarantine.filter(pl.col("file") == str(bad))
    assert sorted(damaged["line"].to_list()) == [2, 4, 5, 6]
    reasons = dropped.filter(pl.col("source").struct.field("file") == str(bad))["drop_reason"].to_list()
    assert sorted(reasons) == ["empty_turn"] + ["exact_duplicate"] * 3  # its good lines repeat the pirate sample
    assert oct(os.stat(out / "quarantine.parquet").st_mode & 0o777) == "0o600"
    # the sample's formats all arrived: tool turns from glaive, system turns from the pirate set
    roles = {m["role"] for msgs in kept["messages"].to_list() for m in msgs}
    assert roles == {"system", "user", "assistant", "tool"}
    assert "<img" in (out / "report.html").read_text()
    # the report never carries record text
    assert "Ahoy matey" not in (out / "report.json").read_text() + (out / "report.html").read_text()


def _write_cfg(tmp_path: Path) -> Path:
    path = tmp_path / "cfg.yaml"
    path.write_text("pii:\n  enabled: false\ndedup:\n  minhash:\n    enabled: false\n")
    return path


def test_same_input_gives_identical_bytes_whatever_the_worker_count(tmp_path: Path) -> None:
    inputs = expand_inputs([str(ROOT / "sample_data")])
    LocalEngine(_cfg(inputs), tmp_path / "a", workers=1).run()
    LocalEngine(_cfg(inputs), tmp_path / "b", workers=2).run()
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")


def test_resume_refuses_a_different_config(tmp_path: Path) -> None:
    inputs = [str(ROOT / "sample_data" / "pirate_training_set.jsonl")]
    LocalEngine(_cfg(inputs), tmp_path, workers=1).run()
    with pytest.raises(Exception, match="different config"):
        LocalEngine(_cfg(inputs, seed=5), tmp_path, workers=1).run()
    LocalEngine(_cfg(inputs, seed=5), tmp_path, workers=1).run(fresh=True)


def test_a_step_that_fails_on_one_record_quarantines_only_that_record() -> None:
    class Fragile:
        name = "fragile"
        only_kept = False

        def __call__(self, batch: pl.DataFrame) -> pl.DataFrame:
            texts = [m[0]["content"] for m in batch["messages"].to_list()]
            if any("boom" in t for t in texts):
                raise ValueError("cannot handle boom")
            return batch

        def rules(self) -> list:
            return []

    from curator.record import make_record, to_table

    records = [
        make_record([{"role": "user", "content": t}, {"role": "assistant", "content": "ok"}],
                    source={"file": "f.jsonl", "index": i, "line": i + 1, "format": "openai"})
        for i, t in enumerate(["fine", "boom", "also fine"])
    ]
    frame = pl.from_arrow(to_table(records)).with_columns(pl.Series("row", [0, 1, 2]))
    out, bad = _apply_map_steps(frame, [Normalize(), Fragile()])
    assert out["row"].to_list() == [0, 2]
    assert [b["row"] for b in bad] == [1] and "cannot handle boom" in bad[0]["reason"]
    assert bad[0]["line"] == 2


def _big_input(path: Path, copies: int) -> Path:
    """Real ShareGPT and pair records repeated with a numbered perturbation, as JSONL."""
    rows = [json.loads(x) for x in (ROOT / "sample_data" / "gsm8k_train_400.jsonl").read_text().splitlines()]
    with open(path, "w") as fh:
        for c in range(copies):
            for r in rows:
                fh.write(json.dumps({"question": f"{r['question']} (variant {c})", "answer": r["answer"]}) + "\n")
    return path


def test_killed_run_resumes_without_loss_or_duplicates(tmp_path: Path) -> None:
    data = _big_input(tmp_path / "big.jsonl", copies=25)  # 10k records, 20 parts of 500
    cfg_path = tmp_path / "cfg.yaml"
    cfg_path.write_text("pii: {enabled: false}\ndedup: {minhash: {enabled: false}}\ningest: {batch_size: 500}\n")
    reference = tmp_path / "ref"
    assert main(["curate", str(data), "--out", str(reference), "--config", str(cfg_path), "--workers", "1"]) == 0

    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "curator.cli", "curate", str(data), "--out", str(out),
           "--config", str(cfg_path), "--workers", "1"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and len(list((out / "_work" / "ingest").glob("*.parquet"))) < 4:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    parts_before = len(list((out / "_work" / "ingest").glob("*.parquet")))
    assert 0 < parts_before < 20, "the kill should land mid-ingest"
    assert main(["curate", str(data), "--out", str(out), "--config", str(cfg_path), "--workers", "1"]) == 0
    assert _digest(out) == _digest(reference)
    report = json.loads((out / "report.json").read_text())
    assert report["accounting"]["read"] == 10_000


def test_a_second_run_into_a_busy_out_dir_stops_clearly(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    data = _big_input(tmp_path / "big.jsonl", copies=25)
    cfg_path = tmp_path / "cfg.yaml"
    cfg_path.write_text("pii: {enabled: false}\ndedup: {minhash: {enabled: false}}\ningest: {batch_size: 500}\n")
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "curator.cli", "curate", str(data), "--out", str(out),
           "--config", str(cfg_path), "--workers", "1"]
    first = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not list((out / "_work" / "ingest").glob("*.parquet")):
        time.sleep(0.05)
    assert first.poll() is None, "the first run should still be ingesting"
    # a second run (even --fresh, which would delete the first one's work) is refused at once
    code = main(["curate", str(data), "--out", str(out), "--config", str(cfg_path), "--workers", "1", "--fresh"])
    assert code == 2
    assert "being written by another run" in " ".join(capsys.readouterr().err.split())
    assert first.wait(timeout=300) == 0
    assert json.loads((out / "report.json").read_text())["accounting"]["read"] == 10_000
    assert main(["curate", str(data), "--out", str(out), "--config", str(cfg_path), "--workers", "1"]) == 0


def test_curate_then_pack_from_the_command_line(tmp_path: Path, tiny_tokenizer_dir: Path) -> None:
    import datasets

    cfg = _write_cfg(tmp_path)
    curated = tmp_path / "curated"
    inputs = [str(ROOT / "sample_data" / n) for n in ("gsm8k_train_400.jsonl", "glaive_toolcall_100_sharegpt.json")]
    assert main(["curate", *inputs, "--out", str(curated), "--config", str(cfg), "--workers", "1"]) == 0
    shards = tmp_path / "shards"
    assert main(["pack", str(curated), "--out", str(shards), "--tokenizer", str(tiny_tokenizer_dir),
                 "--seq-len", "512", "--config", str(cfg)]) == 0
    manifest = json.loads((shards / "manifest.json").read_text())
    kept = pl.read_parquet(curated / "kept" / "*.parquet")
    assert manifest["records"]["count"] == kept.height
    train = datasets.load_dataset("parquet", data_files=str(shards / "train" / "*.parquet"), split="train")
    assert set(train.column_names) >= {"input_ids", "loss_mask", "position_ids", "seq_lens", "sample_ids"}
    assert all(len(row) == 512 for row in train["input_ids"])
    assert set(sid for ids in train["sample_ids"] for sid in ids) <= set(kept["id"].to_list())
    assert (shards / "pack_report.html").read_text().count("<img") == 2
    # a missing tokenizer is one clear line, not a traceback
    assert main(["pack", str(curated), "--out", str(tmp_path / "x"), "--tokenizer", str(tmp_path / "nope")]) == 2


def test_unreadable_inputs_are_all_named_before_any_work(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    tokenized = tmp_path / "tokenized.json"
    tokenized.write_text(json.dumps([{"input_ids": [1, 2, 3], "labels": [1, 2, 3], "attention_mask": [1, 1, 1]}]))
    good = ROOT / "sample_data" / "pirate_training_set.jsonl"
    out = tmp_path / "out"
    code = main(["curate", str(good), str(tokenized), str(tmp_path / "missing.jsonl"), "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2
    assert "2 input(s) cannot be read" in err and "tokenized.json" in err and "missing.jsonl" in err
    assert not (out / "_work").exists(), "nothing may start when an input is unreadable"
