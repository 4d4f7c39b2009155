"""The feedback loop end to end on real sample data with a tiny local model: rounds, report, resume."""

from __future__ import annotations

import hashlib
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest

from curator import api
from curator.cli import main
from curator.engines.plan import ResumeMismatch
from curator.select.loop import load_loop_config

ROOT = Path(__file__).resolve().parent.parent

CONFIG = """
curate:
  inputs:
    - {path: %(s)s/gsm8k_train_400.jsonl, category: math}
    - {path: %(s)s/glaive_toolcall_100_sharegpt.json, category: tool_use}
    - {path: %(s)s/self_instruct_user_oriented_150.jsonl, category: instructions, override_category: true}
  pii: {enabled: false}
  dedup: {minhash: {enabled: false}}
  split: {eval_fraction: 0.2}
  format: {seq_len: 256}
  balance: {min_per_category: 4}
model: {builtin: tiny, vocab_size: 512, hidden_size: 32, layers: 1, heads: 2, pretrain_steps: 20}
train: {lr: 0.003, warmup_steps: 1, max_steps: 6, micro_batch_size: 2, checkpoint_every: 2, cpu_threads: 1,
        lora: {r: 4, alpha: 8, dropout: 0.0}, eval: {batch_size: 8, max_new_tokens: 8}}
rounds: 2
token_budget: 12000
score_max_len: 256
score_per_category: 12
generate_per_category: 2
heldout:
  - {path: %(s)s/truthfulqa_59.csv, category: general}
"""


def _config(tmp_path: Path) -> Path:
    path = tmp_path / "loop.yaml"
    path.write_text(CONFIG % {"s": ROOT / "sample_data"})
    return path


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def loop_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("loop")
    out = tmp / "out"
    api.loop(load_loop_config(_config(tmp)), out, workers=1, progress=False)
    return out


def test_rounds_share_one_eval_set_and_the_base_never_sees_it(loop_run: Path) -> None:
    r0, r1 = loop_run / "round_00" / "shards", loop_run / "round_01" / "shards"
    evals0 = sorted((r0 / "eval").glob("*.parquet"))
    assert evals0 and [_sha(p) for p in evals0] == [_sha(r1 / "eval" / p.name) for p in evals0]
    records = pl.read_parquet(r0 / "records.parquet")
    eval_ids = set(records.filter(pl.col("split") == "eval")["id"].to_list())
    scored = pl.read_parquet(loop_run / "base_pool_scores.parquet")
    assert eval_ids and not (eval_ids & set(scored["id"].to_list())), "eval records must not be in the training pool"
    assert scored.group_by("category").len()["len"].max() <= 12  # a sample per category, scored once by the base
    pretrain = json.loads((loop_run / "base" / "pretrain.json").read_text())
    assert pretrain["loss_last"][0] < pretrain["loss_first"][0]
    generated = set(pl.read_parquet(loop_run / "generate_records.parquet")["id"].to_list())
    assert generated and generated <= eval_ids
    heldout = pl.read_parquet(loop_run / "heldout.parquet")
    assert heldout.height == 59 and not (set(heldout["id"].to_list()) & set(scored["id"].to_list()))


def test_every_round_reports_generation_metrics_heldout_loss_and_noise(loop_run: Path) -> None:
    base = json.loads((loop_run / "base_eval.json").read_text())
    for ev in (base, json.loads((loop_run / "round_01" / "train" / "eval.json").read_text())):
        assert ev["schema_version"] == 2
        assert all(v["loss_se"] > 0 for v in ev["per_category"].values())
        gen = ev["generation"]
        assert set(gen["per_category"]) == {"math", "tool_use", "instructions"}
        kinds: dict[str, set[str]] = {}
        for row in gen["per_sample"].values():
            kinds.setdefault(row["category"], set()).add(row["kind"])
        assert kinds["math"] == {"final_number"} and kinds["instructions"] == {"text"}
        for cat, found in kinds.items():  # a metric is reported exactly where an answer of its kind was scored
            assert ("exact_match" in gen["per_category"][cat]) == ("final_number" in found)
            assert ("valid_json" in gen["per_category"][cat]) == ("tool_call" in found)
        assert ev["heldout"]["overall"]["samples"] == 59 and ev["heldout"]["overall"]["loss_se"] > 0


def test_feedback_changes_the_next_round_and_the_report_says_how(loop_run: Path) -> None:
    report = json.loads((loop_run / "loop_report.json").read_text())
    r0, r1 = report["rounds"]
    assert set(r0["category_weights"]) == {"math", "tool_use", "instructions"}
    selection = json.loads((loop_run / "round_01" / "selection.json").read_text())
    assert sum(selection["category_weights"].values()) == pytest.approx(1.0, abs=1e-4)
    assert selection["category_weights"] != r0["category_weights"]
    assert sum(selection["example_reasons"].values()) == len(selection["example_weights"]) > 0
    assert r1["change"]["added"] + r1["change"]["kept"] == r1["train_records"]
    assert sum(r1["change"]["removed_by_reason"].values()) == r1["change"]["removed"]
    for r in (r0, r1):
        assert set(r["eval"]["per_category"]) == {"math", "tool_use", "instructions"}
        assert r["train_curve"] and r["train_tokens"]["trainable"] > 0
    verdict = report["verdict"]
    assert set(verdict["per_category"]) == {"math", "tool_use", "instructions"}
    for key in ("macro", "worst"):
        assert verdict[key]["verdict"] in {"better", "worse", "within noise"} and verdict[key]["se"] is not None
    assert isinstance(selection["held_still"], list) and selection["note"]
    detail = selection["category_detail"]["math"]
    assert detail["pool_tokens"] > 0 and detail["tokens_trained"] > 0 and "gain_se" in detail
    html = (loop_run / "loop_report.html").read_text()
    assert "Verdict" in html and "vs round 0 (static balance)" in html and html.count("<img") >= 3
    assert "Forgetting check" in html and "chrF" in html


def test_killed_loop_resumes_to_the_same_result(loop_run: Path, tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "curator.cli", "loop", str(cfg), "--out", str(out), "--workers", "1"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    target = out / "round_01" / "train" / "metrics.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and not target.exists():
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "loop_report.json").exists(), "the kill should land inside round 1"
    api.loop(load_loop_config(cfg), out, workers=1, progress=False)
    for name in ("round_01/selection.json", "round_00/train/eval.json", "round_01/train/eval.json"):
        a, b = json.loads((loop_run / name).read_text()), json.loads((out / name).read_text())
        for key in ("shards", "adapter", "model", "shards_config_hash"):  # paths differ between out dirs
            a.pop(key, None), b.pop(key, None)
        assert a == b, name


def test_a_changed_config_refuses_the_old_loop_dir(loop_run: Path, tmp_path: Path) -> None:
    cfg = load_loop_config(_config(tmp_path))
    cfg.feedback.eta = 3.0
    with pytest.raises(ResumeMismatch):
        api.loop(cfg, loop_run, workers=1, progress=False)


def test_more_rounds_extend_a_finished_loop_without_redoing_it(loop_run: Path, tmp_path: Path) -> None:
    """Runs last: it adds a third round to the module's loop dir."""
    done = {name: _sha(loop_run / name) for name in ("round_00/train/eval.json", "round_01/train/eval.json")}
    assert main(["loop", str(_config(tmp_path)), "--out", str(loop_run), "--workers", "1", "--rounds", "3"]) == 0
    report = json.loads((loop_run / "loop_report.json").read_text())
    assert [r["round"] for r in report["rounds"]] == [0, 1, 2]
    assert (loop_run / "round_02" / "train" / "eval.json").is_file()
    assert {name: _sha(loop_run / name) for name in done} == done
