"""Trainer: packed-row correctness, loss goes down, exact resume, grad-accum and DDP equivalence, bad input."""

from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import read_jsonl
from safetensors.torch import load_file

from trainer.cli import eval_main
from trainer.config import TrainConfig
from trainer.data import (
    IGNORE_INDEX,
    RowOrder,
    ShardError,
    make_batch,
    read_manifest,
    read_split,
    shifted_targets,
)
from trainer.loop import TrainingDivergedError, accumulate_gradients, train
from trainer.losses import TokenLoss
from trainer.model import ModelLoadError, adapter_merged, load_base_model, resolve_runtime, wrap_lora
from trainer.schedule import lr_at

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent


def _cfg(model: Path, shards: Path, out: Path, **kw: object) -> TrainConfig:
    base = {"model": str(model), "shards": str(shards), "output_dir": str(out), "cpu_threads": 1, "lr": 1e-2,
            "warmup_steps": 2, "micro_batch_size": 2, "max_steps": 6, "eval": {"enabled": False}}
    base.update(kw)
    return TrainConfig.model_validate(base)


def _adapter(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path / "adapter_model.safetensors"))


def test_schedule_is_warmup_then_cosine_to_floor() -> None:
    lrs = [lr_at(s, base_lr=1.0, warmup_steps=4, total_steps=20, min_lr_ratio=0.1) for s in range(25)]
    assert lrs[:4] == [0.25, 0.5, 0.75, 1.0]
    assert all(a >= b for a, b in itertools.pairwise(lrs[3:]))
    assert lrs[20] == pytest.approx(0.1) and lrs[24] == pytest.approx(0.1)


def test_targets_never_cross_a_document_boundary() -> None:
    ids = torch.tensor([[5, 6, 7, 8, 9, 10, 0, 0]])
    pos = torch.tensor([[0, 1, 2, 0, 1, 2, 0, 1]])
    mask = torch.tensor([[0, 1, 1, 1, 1, 1, 0, 0]])
    assert shifted_targets(ids, mask, pos).tolist() == [[6, 7, -100, 9, 10, -100, -100, -100]]


def test_packed_rows_attend_within_documents_only(tiny_model_dir: Path, packed_shards: Path) -> None:
    """Token losses of the second document of a packed row equal those of that document fed alone."""
    cfg = _cfg(tiny_model_dir, packed_shards, Path("unused"))
    model = load_base_model(cfg, resolve_runtime(cfg))
    loss_fn = TokenLoss(model)
    split = read_split(packed_shards, read_manifest(packed_shards), "train")
    row = next(r for r in range(split.rows) if len(split.seq_lens[r]) >= 2)
    batch = make_batch(split, np.array([row]), torch.device("cpu"))
    start, length = split.seq_lens[row][0], split.seq_lens[row][1]
    packed_idx, packed = loss_fn.per_token(batch["input_ids"], batch["position_ids"], batch["targets"], 64)
    alone_ids = batch["input_ids"][:, start : start + length]
    alone_pos = batch["position_ids"][:, start : start + length]
    alone_tgt = batch["targets"][:, start : start + length]
    alone_idx, alone = loss_fn.per_token(alone_ids, alone_pos, alone_tgt, 64)
    in_doc = (packed_idx >= start) & (packed_idx < start + length)
    assert alone.numel() > 0 and torch.equal(packed_idx[in_doc] - start, alone_idx)
    torch.testing.assert_close(packed[in_doc], alone, rtol=1e-5, atol=1e-5)


def test_evaluation_folds_the_adapter_in_and_leaves_it_as_it_was(tiny_model_dir: Path, tmp_path: Path) -> None:
    probe = torch.tensor([[5, 17, 99, 300, 42, 7, 250, 3]])
    for targets, folds in ((["q_proj", "v_proj", "down_proj"], True), (["q_proj", "lm_head"], False)):
        cfg = _cfg(tiny_model_dir, tmp_path, tmp_path, lora={"target_modules": targets})
        model = wrap_lora(load_base_model(cfg, resolve_runtime(cfg)), cfg).eval()
        torch.manual_seed(0)
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.data.normal_(0.0, 0.05)  # a trained adapter: B is no longer zero
        weights = {k: v.clone() for k, v in model.state_dict().items() if "lora" not in k}
        with torch.no_grad():
            adapted = model(probe).logits
            with adapter_merged(model):
                merged = [m.merged for m in model.modules() if hasattr(m, "merged")]
                folded = model(probe).logits
            after = model(probe).logits
        # folded where it is exact; an adapted head tied to the embeddings stays unmerged
        assert merged and all(merged) is folds and not any(m.merged for m in model.modules() if hasattr(m, "merged"))
        torch.testing.assert_close(folded, adapted, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(after, adapted, rtol=1e-5, atol=1e-5)
        for key, value in model.state_dict().items():
            if key in weights:
                torch.testing.assert_close(value, weights[key], rtol=0, atol=1e-6)
    assert model.get_base_model().config.tie_word_embeddings


def test_thirty_steps_lower_the_loss_and_write_outputs(
    tiny_model_dir: Path, packed_shards: Path, tmp_path: Path
) -> None:
    """A random tiny model's logits are near-uniform; adapting lm_head too lets 30 steps move them."""
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "lm_head"]
    cfg = _cfg(tiny_model_dir, packed_shards, tmp_path, max_steps=30, eval={"enabled": True},
               lora={"target_modules": targets}, merge=True)
    result = train(cfg)
    metrics = [m for m in read_jsonl(tmp_path / "metrics.jsonl") if "loss" in m]
    assert [m["step"] for m in metrics] == list(range(1, 31))
    first, last = np.mean([m["loss"] for m in metrics[:5]]), np.mean([m["loss"] for m in metrics[-5:]])
    assert last < first - 0.3, (first, last)
    base = eval_main(cfg, adapter="none")
    assert result["eval_overall"]["loss"] < base["overall"]["loss"] - 0.3
    for key in ("lr", "tokens_per_s", "peak_mem_mb", "packing_efficiency", "grad_norm"):
        assert all(m[key] > 0 for m in metrics), key
    from peft import PeftModel

    reloaded = PeftModel.from_pretrained(load_base_model(cfg, resolve_runtime(cfg)), tmp_path / "adapter")
    trained = {k: v for k, v in reloaded.state_dict().items() if "lora_B" in k}
    assert trained and all(v.abs().sum() > 0 for v in trained.values())
    from transformers import AutoModelForCausalLM

    merged = AutoModelForCausalLM.from_pretrained(result["merged"])
    probe = torch.tensor([[5, 17, 99, 300, 42, 7]])
    with torch.no_grad():
        torch.testing.assert_close(merged(probe).logits, reloaded.eval()(probe).logits, rtol=1e-4, atol=1e-4)
    report = json.loads((tmp_path / "eval.json").read_text())
    assert report["overall"] == result["eval_overall"]
    assert set(report["per_category"]) == {"math", "general"}


def test_killed_and_resumed_run_ends_with_the_same_adapter(
    tiny_model_dir: Path, packed_shards: Path, tmp_path: Path
) -> None:
    kw = {"max_steps": 8, "checkpoint_every": 3, "grad_accum": 2, "lora": {"dropout": 0.1}}
    full = train(_cfg(tiny_model_dir, packed_shards, tmp_path / "full", **kw))

    def crash(step: int, _metrics: dict) -> None:
        if step == 5:
            raise KeyboardInterrupt("simulated kill after step 5")

    with pytest.raises(KeyboardInterrupt):
        train(_cfg(tiny_model_dir, packed_shards, tmp_path / "killed", **kw), on_step=crash)
    assert not (tmp_path / "killed" / "adapter").exists()
    resumed = train(_cfg(tiny_model_dir, packed_shards, tmp_path / "killed", **kw))
    assert resumed["resumed_from"].endswith("step-00000003")
    a, b = _adapter(Path(full["adapter"])), _adapter(Path(resumed["adapter"]))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert full["final"]["loss"] == resumed["final"]["loss"]
    steps = [m["step"] for m in read_jsonl(tmp_path / "killed" / "metrics.jsonl")]
    assert steps == list(range(1, 9))


def test_gradient_checkpointing_gives_the_same_adapter(
    tiny_model_dir: Path, packed_shards: Path, tmp_path: Path
) -> None:
    kw = {"max_steps": 2, "lora": {"dropout": 0.0}}
    plain = train(_cfg(tiny_model_dir, packed_shards, tmp_path / "plain", **kw))
    ckpt = train(_cfg(tiny_model_dir, packed_shards, tmp_path / "gc", gradient_checkpointing=True, **kw))
    a, b = _adapter(Path(plain["adapter"])), _adapter(Path(ckpt["adapter"]))
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6)


def test_grad_accumulation_equals_one_big_batch(tiny_model_dir: Path, packed_shards: Path) -> None:
    cfg = _cfg(tiny_model_dir, packed_shards, Path("unused"), lora={"dropout": 0.0})
    split = read_split(packed_shards, read_manifest(packed_shards), "train")
    torch.manual_seed(0)
    model = wrap_lora(load_base_model(cfg, resolve_runtime(cfg)), cfg)
    with torch.no_grad():  # non-zero B so every LoRA weight gets a gradient
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.02)
    loss_fn = TokenLoss(model)
    rows = RowOrder(split.rows, 0).micro_rows(0, 4)
    cpu = torch.device("cpu")

    def grads(batches: list[dict]) -> dict[str, torch.Tensor]:
        model.zero_grad(set_to_none=True)
        tokens = sum(int((b["targets"] != IGNORE_INDEX).sum()) for b in batches)
        accumulate_gradients(loss_fn, batches, tokens)
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}

    big = grads([make_batch(split, rows, cpu)])
    accumulated = grads([make_batch(split, rows[i : i + 1], cpu) for i in range(4)])
    assert big.keys() == accumulated.keys() and len(big) > 0
    for name in big:
        torch.testing.assert_close(accumulated[name], big[name], rtol=1e-4, atol=1e-7)


def test_ddp_on_gloo_matches_a_single_process_big_batch(
    tiny_model_dir: Path, packed_shards: Path, tmp_path: Path
) -> None:
    """2 ranks x micro 1 (torchrun, gloo) == 1 process x micro 2; only rank 0 writes."""
    kw = {"max_steps": 4, "micro_batch_size": 1, "lora": {"dropout": 0.0}, "eval": {"enabled": True}}
    cfg = _cfg(tiny_model_dir, packed_shards, tmp_path / "ddp", **kw)
    path = tmp_path / "ddp.yaml"
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29531"]
    proc = subprocess.run([*torchrun, "-m", "trainer.cli", "train", str(path)], env=env, capture_output=True,
                          text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    single = train(_cfg(tiny_model_dir, packed_shards, tmp_path / "single", **{**kw, "micro_batch_size": 2}))
    # The loss and the gradient norm of every step are scale-sensitive (a wrong token normalisation
    # across ranks would change them) and come before Adam, which divides by sqrt(v) and so can turn
    # reduction-order noise in a near-zero gradient into a visible weight difference.
    ddp_steps = read_jsonl(tmp_path / "ddp" / "metrics.jsonl")
    single_steps = read_jsonl(tmp_path / "single" / "metrics.jsonl")
    assert len(ddp_steps) == len(single_steps) == 4
    for d, s in zip(ddp_steps, single_steps, strict=True):
        assert d["loss"] == pytest.approx(s["loss"], rel=1e-5)
        assert d["grad_norm"] == pytest.approx(s["grad_norm"], rel=1e-4)
    a, b = _adapter(tmp_path / "ddp" / "adapter"), _adapter(Path(single["adapter"]))
    for key in a:  # a tenth of one Adam step (lr 1e-2) at most, and far less on average
        assert (a[key] - b[key]).abs().max() < 1e-3 and (a[key] - b[key]).abs().mean() < 1e-5, key
    assert sorted(p.name for p in (tmp_path / "ddp").iterdir()) == ["adapter", "eval.json", "metrics.jsonl"]


def test_diverging_run_stops_and_keeps_the_last_good_checkpoint(
    tiny_model_dir: Path, packed_shards: Path, tmp_path: Path
) -> None:
    cfg = _cfg(tiny_model_dir, packed_shards, tmp_path, max_steps=40, checkpoint_every=1, lr=1e30,
               warmup_steps=0, max_grad_norm=None)
    with pytest.raises(TrainingDivergedError, match=r"not finite.*Last good checkpoint: .*step-"):
        train(cfg)
    kept = sorted((tmp_path / "checkpoints").glob("step-*"))
    assert kept and all(torch.isfinite(t).all() for t in _adapter(kept[-1]).values())


def _copy_shards(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_bad_input_fails_before_training_with_what_to_do(
    tiny_model_dir: Path, tiny_tokenizer_dir: Path, packed_shards: Path, tmp_path: Path
) -> None:
    corrupt = _copy_shards(packed_shards, tmp_path / "corrupt")
    part = corrupt / read_manifest(corrupt)["splits"]["train"]["files"][0]["path"]
    part.write_bytes(part.read_bytes()[:-20] + b"\0" * 20)
    with pytest.raises(ShardError, match="sha256 differs"):
        train(_cfg(tiny_model_dir, corrupt, tmp_path / "o1"))

    missing = _copy_shards(packed_shards, tmp_path / "missing")
    (missing / read_manifest(missing)["splits"]["train"]["files"][0]["path"]).unlink()
    with pytest.raises(ShardError, match="missing; re-run"):
        train(_cfg(tiny_model_dir, missing, tmp_path / "o2"))

    other = _copy_shards(packed_shards, tmp_path / "other_tok")
    manifest = read_manifest(other)
    manifest["tokenizer"]["hash"] = "0" * 64
    (other / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ShardError, match=r"re-pack with format\.tokenizer"):
        train(_cfg(tiny_model_dir, other, tmp_path / "o3"))

    no_eval = _copy_shards(packed_shards, tmp_path / "no_eval")
    manifest = read_manifest(no_eval)
    manifest["splits"]["eval"]["files"] = []
    (no_eval / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ShardError, match="eval split is empty"):
        train(_cfg(tiny_model_dir, no_eval, tmp_path / "o4", eval={"enabled": True}))

    from trainer.tiny import build_tiny_model

    short = build_tiny_model(tiny_tokenizer_dir, tmp_path / "short_model", max_positions=256)
    with pytest.raises(ShardError, match="seq_len 512 exceeds the model's maximum of 256"):
        train(_cfg(short, packed_shards, tmp_path / "o5"))

    with pytest.raises(ModelLoadError, match=r"qlora.*CUDA"):
        resolve_runtime(_cfg(tiny_model_dir, packed_shards, tmp_path / "o6", qlora=True, device="cpu"))
    assert not any((tmp_path / f"o{i}").exists() for i in range(1, 7))
