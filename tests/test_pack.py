"""Packing: best-fit decreasing, row layout, document isolation in a real model, and the shard writer."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch

from curator.config import CurateConfig
from curator.format import build_shards
from curator.format.chat import ChatFormatter, Encoded, load_tokenizer
from curator.format.pack import Document, bfd_bins, pack_rows
from curator.record import schema_errors

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
from pack_data import mix_table


def _docs(lengths: list[int]) -> list[Document]:
    return [
        Document(f"doc{i}", "c", np.arange(n, dtype=np.int32) + 10, (np.arange(n) % 2).astype(np.int8))
        for i, n in enumerate(lengths)
    ]


def test_bfd_chooses_the_tightest_bin() -> None:
    assert bfd_bins([6, 5, 4, 3, 2], 10) == [[0, 2], [1, 3, 4]]
    assert bfd_bins([7, 3, 5, 5], 10) == [[0, 1], [2, 3]]


def test_bfd_places_every_document_once_within_capacity() -> None:
    lengths = np.random.default_rng(3).integers(1, 300, 2000).tolist()
    bins = bfd_bins(lengths, 512)
    flat = sorted(i for b in bins for i in b)
    assert flat == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in b) <= 512 for b in bins)
    assert bins == bfd_bins(lengths, 512)
    lower_bound = -(-sum(lengths) // 512)
    assert len(bins) <= lower_bound + 1
    with pytest.raises(ValueError, match="packing needs"):
        bfd_bins([513], 512)


def test_rows_carry_positions_lengths_and_ids() -> None:
    docs = _docs([5, 3, 7, 2])
    bins = bfd_bins([5, 3, 7, 2], 10)
    table = pack_rows(docs, bins, 10, pad_id=0)
    rows = table.to_pylist()
    assert [len(r["input_ids"]) for r in rows] == [10, 10]
    assert rows[0]["seq_lens"] == [7, 3] and rows[0]["sample_ids"] == ["doc2", "doc1"]
    assert rows[0]["position_ids"] == [0, 1, 2, 3, 4, 5, 6, 0, 1, 2]
    assert rows[1]["seq_lens"] == [5, 2] and rows[1]["position_ids"] == [0, 1, 2, 3, 4, 0, 1, 0, 1, 2]
    assert rows[1]["input_ids"][7:] == [0, 0, 0] and rows[1]["loss_mask"][7:] == [0, 0, 0]
    assert rows[0]["input_ids"][:7] == docs[2].input_ids.tolist()
    assert rows[0]["loss_mask"][7:] == docs[1].loss_mask.tolist()


@pytest.mark.slow
def test_packed_document_logits_equal_alone(tiny_model_dir: Path, shared_data: Path) -> None:
    """Position ids without a 2D mask isolate documents; a 2D all-ones mask leaks across them."""
    from transformers import AutoModelForCausalLM

    tok, _ = load_tokenizer(tiny_model_dir)
    fmt = ChatFormatter(tok, CurateConfig().format)
    records = mix_table(shared_data, per_source=3).to_pylist()
    encs = [e for _, e in fmt.encode_many(records) if isinstance(e, Encoded)][:3]
    docs = [Document(f"d{i}", "c", e.input_ids[:200], e.loss_mask[:200]) for i, e in enumerate(encs)]
    seq_len = sum(len(d.input_ids) for d in docs) + 5
    row = pack_rows(docs, [[0, 1, 2]], seq_len, tok.pad_token_id).to_pylist()[0]
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, local_files_only=True).eval()
    ids = torch.tensor([row["input_ids"]])
    pos = torch.tensor([row["position_ids"]])
    start = len(docs[0].input_ids)
    middle = docs[1].input_ids
    with torch.no_grad():
        packed = model(input_ids=ids, position_ids=pos, attention_mask=None, use_cache=False).logits[0]
        alone = model(input_ids=torch.tensor([middle.tolist()]), use_cache=False).logits[0]
        leaky = model(input_ids=ids, position_ids=pos, attention_mask=torch.ones_like(ids), use_cache=False).logits[0]
    got = packed[start : start + len(middle)]
    assert (got - alone).abs().max().item() < 1e-4
    assert (leaky[start : start + len(middle)] - alone).abs().max().item() > 1e-3


@pytest.fixture(scope="module")
def kept_frame(shared_data: Path) -> pl.DataFrame:
    """A real mix with dedup-style cluster ids: some clusters span several records."""
    df = pl.from_arrow(mix_table(shared_data, per_source=60))
    return df.with_columns(
        pl.when(pl.int_range(pl.len()) % 7 == 0)
        .then(pl.lit("cluster-") + (pl.int_range(pl.len()) % 5).cast(pl.String))
        .otherwise(None)
        .alias("cluster_id")
    )


def _cfg(tokenizer: Path, **fmt: object) -> CurateConfig:
    return CurateConfig.model_validate(
        {
            "seed": 7,
            "format": {"tokenizer": str(tokenizer), "seq_len": 512, "shard_rows": 16, **fmt},
            "split": {"eval_fraction": 0.15, "test_fraction": 0.1},
        }
    )


@pytest.mark.shared
def test_build_shards_end_to_end(kept_frame: pl.DataFrame, tiny_tokenizer_dir: Path, tmp_path: Path) -> None:
    import hashlib

    from datasets import load_dataset

    cfg = _cfg(tiny_tokenizer_dir)
    manifest = build_shards(kept_frame, tmp_path / "a", cfg, progress=False)
    assert schema_errors(manifest, "manifest.schema.json") == []
    assert json.loads((tmp_path / "a" / "manifest.json").read_text()) == manifest
    for name, split in manifest["splits"].items():
        files = [str(tmp_path / "a" / f["path"]) for f in split["files"]]
        assert len(files) >= 1 and all(f["rows"] <= 16 for f in split["files"])
        for f in split["files"]:
            assert hashlib.sha256((tmp_path / "a" / f["path"]).read_bytes()).hexdigest() == f["sha256"]
        ds = load_dataset("parquet", data_files=files, split="train")
        assert ds.num_rows == split["rows"]
        assert set(ds.column_names) == set(manifest["columns"])
        assert all(len(r) == 512 for r in ds["input_ids"])
        assert sum(sum(s) for s in ds["seq_lens"]) == split["tokens"]["total"] - split["tokens"]["padding"]
        assert name in ("train", "eval", "test")

    records = pl.read_parquet(tmp_path / "a" / "records.parquet")
    assert records.height == kept_frame.height
    packed = records.filter(pl.col("status") == "packed")
    assert packed["split"].null_count() == 0
    assert records.filter(pl.col("status") != "packed").height == sum(manifest["format"]["dropped"].values())
    clusters = packed.filter(pl.col("cluster_id").is_not_null()).group_by("cluster_id").agg(pl.col("split").n_unique())
    assert clusters["split"].max() == 1
    assert manifest["packing_efficiency"] > 0.9
    assert manifest["tokens"]["trainable"] < manifest["tokens"]["total"] - manifest["tokens"]["padding"]

    # Same inputs (in another order) + config + seed: byte-identical outputs.
    build_shards(kept_frame.reverse(), tmp_path / "b", cfg, progress=False)
    for f in sorted((tmp_path / "a").rglob("*.*")):
        assert f.read_bytes() == (tmp_path / "b" / f.relative_to(tmp_path / "a")).read_bytes(), f.name


@pytest.mark.shared
def test_every_token_traces_to_its_record(kept_frame: pl.DataFrame, tiny_tokenizer_dir: Path, tmp_path: Path) -> None:
    cfg = _cfg(tiny_tokenizer_dir, train_on="last_assistant")
    build_shards(kept_frame, tmp_path, cfg, progress=False)
    tok, _ = load_tokenizer(tiny_tokenizer_dir)
    fmt = ChatFormatter(tok, cfg.format)
    by_id = {r["id"]: r for r in kept_frame.to_dicts()}
    rows = pl.read_parquet(tmp_path / "eval").to_dicts()
    seen = 0
    for row in rows:
        start = 0
        for sid, n in zip(row["sample_ids"], row["seq_lens"], strict=True):
            enc = fmt.encode(by_id[sid])
            assert row["input_ids"][start : start + n] == enc.input_ids.tolist()
            assert row["loss_mask"][start : start + n] == enc.loss_mask.tolist()
            assert row["position_ids"][start : start + n] == list(range(n))
            start += n
            seen += 1
    records = pl.read_parquet(tmp_path / "records.parquet")
    assert seen == records.filter(pl.col("split") == "eval").height > 0


@pytest.mark.shared
def test_split_documents_on_request(kept_frame: pl.DataFrame, tiny_tokenizer_dir: Path, tmp_path: Path) -> None:
    cfg = _cfg(tiny_tokenizer_dir, seq_len=128, split_documents=True)
    manifest = build_shards(kept_frame, tmp_path, cfg, progress=False)
    assert manifest["format"]["documents_split"] > 0
    assert manifest["format"]["dropped"].get("overlong", 0) == 0
    assert sum(s["documents"] for s in manifest["splits"].values()) > sum(
        s["records"] for s in manifest["splits"].values()
    )
