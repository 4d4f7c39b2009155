"""Exports are read by their consumers' own code (datasets, TRL) and by our readers, split as `pack` splits."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import datasets
import polars as pl
import pytest

from curator import api
from curator.cli import main
from curator.config import load_config
from curator.format.chat import ChatFormatter, load_tokenizer
from curator.format.export import ExportError
from curator.format.shards import build_shards
from curator.ingest import Quarantined, ReaderOptions, read_input
from curator.io import write_parquet
from curator.record import make_record, to_table

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "sample_data"
SOURCES = ["glaive_toolcall_100_sharegpt.json", "pirate_training_set.jsonl", "chatgpt_export/conversations.json",
           "claude_export/conversations.json", "oasst_en_60_trees.jsonl"]
# Parallel calls with ids, tool results naming their call, OpenAI-style tools: the richest OpenAI row.
WEATHER = {
    "messages": [
        {"role": "system", "content": "You are a travel agent."},
        {"role": "user", "content": "What is the weather in Paris and in Rome?"},
        {"role": "assistant", "content": "", "tool_calls": [
            {"id": f"call_{c[0].lower()}", "type": "function",
             "function": {"name": "get_weather", "arguments": json.dumps({"city": c})}} for c in ("Paris", "Rome")
        ]},
        {"role": "tool", "tool_call_id": "call_p", "content": "{\"celsius\": 18}"},
        {"role": "tool", "tool_call_id": "call_r", "content": "{\"celsius\": 24}"},
        {"role": "assistant", "content": "Paris has 18°C and Rome 24°C.", "name": "agent"},
    ],
    "tools": [{"type": "function", "function": {
        "name": "get_weather", "description": "Current weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}],
    "category": "tool_use",
}


def _read(path: Path) -> list[dict[str, Any]]:
    """Every record our readers make of `path` (none may be quarantined)."""
    out = []
    for rec in read_input(path, str(path), None, ReaderOptions()):
        assert not isinstance(rec, Quarantined), rec
        out.append(rec)
    return out


@pytest.fixture(scope="module")
def kept(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, dict[str, Any]]]:
    """A curate-like output dir: real exports (tool calls, trees, ChatGPT and Claude), plus edge records."""
    root = tmp_path_factory.mktemp("kept")
    (root / "weather.jsonl").write_text(json.dumps(WEATHER) + "\n", encoding="utf-8")
    records = [r for name in SOURCES for r in _read(SAMPLE / name)] + _read(root / "weather.jsonl")
    src = {"file": "handmade", "index": 0, "format": "dolly"}
    records.append(make_record([{"role": "user", "content": "Summarise the passage."},
                                {"role": "assistant", "content": "Cats sleep a lot."}],
                               source=src, context="Cats sleep twelve to sixteen hours a day.", category="summary"))
    records.append(make_record([{"role": "user", "content": "Is anybody there?"}], source=src))
    write_parquet(to_table(records), root / "kept" / "part-00000.parquet")
    return root, {r["id"]: r for r in records}


def _cfg() -> Any:
    return load_config(None, {"split": {"eval_fraction": 0.25}, "seed": 3})


def _no_call_ids(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Messages without tool-call ids (formats without ids get them added; ids are not content)."""
    return [{**m, "tool_call_id": None,
             "tool_calls": [{**c, "id": None} for c in m["tool_calls"]] if m.get("tool_calls") else None}
            for m in messages]


def _back(paths: list[Path]) -> dict[str, dict[str, Any]]:
    """Records our readers make of an export, keyed by the id the export carried."""
    return {json.loads(r["meta"])["id"]: r for p in paths for r in _read(p)}


def test_openai_export_is_openai_shaped_and_reads_back(kept: tuple[Path, dict], tmp_path: Path) -> None:
    curated, originals = kept
    result = api.export(_cfg(), curated, tmp_path / "oa", format="openai", progress=False)
    ds = datasets.load_dataset("json", data_files={k: str(v) for k, v in result.files.items()})
    assert set(ds) == {"train", "eval"} and {"messages", "tools", "id", "category"} <= set(ds["train"].column_names)
    rows = [r for split in ds.values() for r in split]
    assert len(rows) == len(originals) - 1 == result.summary["records"]["exported"]
    assert result.summary["records"]["skipped"] == {"no_assistant_turn": 1}
    for row in rows:
        open_calls: list[str] = []
        for m in row["messages"]:
            assert set(m) <= {"role", "content", "name", "tool_calls", "tool_call_id"} and isinstance(m["content"], str)
            for call in m.get("tool_calls") or []:
                assert set(call) == {"id", "type", "function"} and call["type"] == "function"
                assert set(call["function"]) == {"name", "arguments"} and isinstance(call["function"]["arguments"], str)
                open_calls.append(call["id"])
            if m["role"] == "tool" and open_calls:
                assert m["tool_call_id"] in open_calls
        for tool in row["tools"] or []:
            assert tool["type"] == "function" and "name" in tool["function"]
    weather = next(r for r in rows if r["id"] == _weather_id(originals))
    assert [c["id"] for c in weather["messages"][2]["tool_calls"]] == ["call_p", "call_r"]

    back = _back(list(result.files.values()))
    assert len(back) == len(rows)
    for rid, rec in back.items():
        orig = originals[rid]
        if orig["context"] is None and orig["tools"] is None:  # nothing the format has to reshape
            assert rec["id"] == rid and _no_call_ids(rec["messages"]) == _no_call_ids(orig["messages"])
        if orig["source"]["format"] == "openai":  # already OpenAI: the very same canonical record
            assert (rec["id"], rec["messages"], rec["tools"], rec["category"]) == (
                rid, orig["messages"], orig["tools"], orig["category"] or "uncategorized")
        if orig["context"]:
            assert orig["context"] in rec["messages"][0]["content"]


def _value(text: str) -> Any:
    """Tool-call arguments as a JSON value, or the text when they are not JSON (ChatGPT's code calls)."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def _weather_id(originals: dict[str, dict[str, Any]]) -> str:
    return next(rid for rid, o in originals.items() if o["source"]["file"].endswith("weather.jsonl"))


def test_sharegpt_export_follows_llamafactory_and_reads_back(kept: tuple[Path, dict], tmp_path: Path) -> None:
    curated, originals = kept
    result = api.export(_cfg(), curated, tmp_path / "sg", format="sharegpt", progress=False)
    info = json.loads((result.out / "dataset_info.json").read_text(encoding="utf-8"))
    assert info["train"] == {"file_name": "train.jsonl", "formatting": "sharegpt",
                             "columns": {"messages": "conversations", "system": "system", "tools": "tools"}}
    ds = datasets.load_dataset("json", data_files={k: str(result.out / v["file_name"]) for k, v in info.items()})
    rows = [r for split in ds.values() for r in split]
    # LLaMA-Factory's rule (data/README, converter.py): human/observation at even places, gpt/function_call
    # at odd ones, an even count; rows breaking it are the ones the summary counts.
    sides = (("human", "observation"), ("gpt", "function_call"))
    broken = [r for r in rows if len(r["conversations"]) % 2
              or any(t["from"] not in sides[i % 2] for i, t in enumerate(r["conversations"]))]
    assert len(broken) == result.summary["notes"]["turns_not_alternating"] >= 1
    # ChatGPT's consecutive assistant turns, Claude's text + call in one turn, two parallel tool results
    assert {originals[r["id"]]["source"]["format"] for r in broken} == {"chatgpt", "claude", "openai"}
    for row in rows:
        for turn in row["conversations"]:
            if turn["from"] == "function_call":
                calls = json.loads(turn["value"])
                assert all({"name", "arguments"} == set(c) for c in (calls if isinstance(calls, list) else [calls]))
        if row["tools"]:
            assert all("name" in t and "type" not in t for t in json.loads(row["tools"]))
    weather = next(r for r in rows if r["id"] == _weather_id(originals))
    assert weather["system"] == "You are a travel agent."
    assert json.loads(weather["conversations"][1]["value"]) == [
        {"name": "get_weather", "arguments": {"city": "Paris"}}, {"name": "get_weather", "arguments": {"city": "Rome"}}]

    back = _back(list(result.files.values()))
    glaive = [rid for rid, o in originals.items() if o["source"]["format"] == "sharegpt" and rid in back]
    assert len(glaive) > 80
    for rid in glaive:  # ShareGPT in, ShareGPT out: the same records, ids included
        assert (back[rid]["id"], back[rid]["messages"], back[rid]["tools"]) == (
            rid, originals[rid]["messages"], originals[rid]["tools"])
    calls = back[weather["id"]]["messages"][2]["tool_calls"]  # the parallel calls come back as one turn
    assert [(c["name"], c["arguments"]) for c in calls] == [("get_weather", '{"city":"Paris"}'),
                                                            ("get_weather", '{"city":"Rome"}')]


def test_hf_export_loads_from_disk_and_trl_renders_the_shard_text(
    kept: tuple[Path, dict], tiny_model_dir: Path, tmp_path: Path
) -> None:
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig, SFTTrainer

    curated, originals = kept
    cfg = _cfg()
    hf = api.export(cfg, curated, tmp_path / "hf", format="hf", progress=False)
    oa = api.export(cfg, curated, tmp_path / "oa", format="openai", progress=False)
    dd = datasets.load_from_disk(str(hf.out))
    assert set(dd) == {"train", "eval"} and dd["train"].features["messages"] == datasets.List(datasets.Json())
    assert {k: d.num_rows for k, d in dd.items()} == hf.counts

    tok, _ = load_tokenizer(tiny_model_dir)
    fmt = ChatFormatter(tok, load_config(None, {"format": {"seq_len": 100_000}}).format)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    args = SFTConfig(output_dir=str(tmp_path / "trl"), max_length=None, report_to="none", bf16=False)
    ours = {rid: fmt.encode(originals[rid]).input_ids.tolist() for rid in dd["train"]["id"]}
    prepared = SFTTrainer(model=model, args=args, train_dataset=dd["train"], processing_class=tok).train_dataset
    assert {r["id"]: r["input_ids"] for r in prepared} == ours  # TRL sees exactly the text pack renders

    train = datasets.load_dataset("json", data_files=str(oa.files["train"]), split="train")
    prepared = SFTTrainer(model=model, args=args, train_dataset=train, processing_class=tok).train_dataset
    got = {r["id"]: r["input_ids"] for r in prepared}
    assert got.keys() == ours.keys()
    # The same text, but where OpenAI's format differs from the template's input: wrapped tool
    # definitions and arguments as JSON strings (rendered verbatim, not re-serialised).
    plain = [rid for rid in ours if originals[rid]["tools"] is None
             and not any(m.get("tool_calls") for m in originals[rid]["messages"])]
    assert plain and all(got[rid] == ours[rid] for rid in plain)

    back = _back([hf.out])
    assert len(back) == sum(hf.counts.values())
    for rid, rec in back.items():  # the same records, but arguments come back as compact sorted JSON
        orig = originals[rid]
        calls = [c for m in orig["messages"] for c in m["tool_calls"] or []]
        if orig["context"] is None and (not calls or orig["source"]["format"] == "sharegpt"):
            assert (rec["id"], rec["messages"], rec["tools"]) == (rid, orig["messages"], orig["tools"])
        for got, want in zip([c for m in rec["messages"] for c in m["tool_calls"] or []], calls, strict=True):
            assert _value(got["arguments"]) == _value(want["arguments"])


def test_exports_split_records_as_pack_does(kept: tuple[Path, dict], tiny_model_dir: Path, tmp_path: Path) -> None:
    curated, _ = kept
    cfg = load_config(None, {"split": {"eval_fraction": 0.25, "test_fraction": 0.1}, "seed": 3,
                             "format": {"tokenizer": str(tiny_model_dir), "seq_len": 4096}})
    build_shards(api.kept_parts(curated), tmp_path / "shards", cfg, progress=False)
    packed = pl.read_parquet(tmp_path / "shards" / "records.parquet").filter(pl.col("status") == "packed")
    assert set(packed["split"]) == {"train", "eval", "test"}
    for fmt in ("openai", "sharegpt", "hf"):
        result = api.export(cfg, curated, tmp_path / fmt, format=fmt, progress=False)
        if fmt == "hf":
            sides = {r["id"]: name for name, d in datasets.load_from_disk(str(result.out)).items() for r in d}
        else:
            sides = {json.loads(line)["id"]: name for name, path in result.files.items()
                     for line in path.read_text(encoding="utf-8").splitlines()}
        assert all(sides[rid] == split for rid, split in packed.select("id", "split").iter_rows())


def test_export_is_deterministic_reconciles_and_guards_its_directory(kept: tuple[Path, dict], tmp_path: Path) -> None:
    curated, originals = kept
    first = api.export(_cfg(), curated, tmp_path / "a", format="sharegpt", progress=False)
    again = api.export(_cfg(), curated, tmp_path / "b", format="sharegpt", progress=False)
    assert first.summary["files"] == again.summary["files"]
    assert (first.out / "export.json").read_bytes() == (again.out / "export.json").read_bytes()
    recs = first.summary["records"]
    assert recs["count"] == len(originals) == recs["exported"] + sum(recs["skipped"].values())
    assert sum(first.counts.values()) == recs["exported"]

    replaced = api.export(_cfg(), curated, tmp_path / "a", format="hf", progress=False)  # over an earlier export
    assert not (tmp_path / "a" / "train.jsonl").exists() and (replaced.out / "dataset_dict.json").is_file()
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me", encoding="utf-8")
    with pytest.raises(ExportError, match="not an earlier export"):
        api.export(_cfg(), curated, tmp_path / "mine", format="openai", progress=False)
    assert main(["export", str(curated), "--out", str(tmp_path / "c"), "--format", "csv"]) == 2
    assert main(["export", str(curated), "--out", str(tmp_path / "c"), "--format", "openai"]) == 0
    assert (tmp_path / "c" / "train.jsonl").read_bytes() != b""
