"""Readers on real exports and pairs: every format, auto-detection, and the per-row conversions."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curator.ingest import FORMATS, Quarantined, ReaderOptions, UnreadableInput, detect_format, read_input
from curator.record import schema_errors, to_table

SAMPLES = {
    "self_instruct_user_oriented_150.jsonl": ("alpaca", 150),
    "gsm8k_train_400.jsonl": ("alpaca", 400),
    "fastchat_dummy_conversation_sharegpt.json": ("sharegpt", 500),
    "glaive_toolcall_100_sharegpt.json": ("sharegpt", 100),
    "oasst_en_60_trees.jsonl": ("oasst", 60),
    "pirate_training_set.jsonl": ("openai", 10),
    "chatgpt_export/conversations.json": ("chatgpt", 1),
    "claude_export/conversations.json": ("claude", 3),
    "axolotl_conversation.json": ("sharegpt", 1),
    "llamafactory_v1_sft_messages_200.jsonl": ("openai", 200),
}


def read_all(path: Path, fmt: str | None = None, **opts: object) -> tuple[list[dict], list[Quarantined]]:
    """Records and quarantine rows of one input, checking every record against the schema."""
    records, bad = [], []
    for item in read_input(path, str(path), fmt, ReaderOptions(**opts)):
        if isinstance(item, Quarantined):
            bad.append(item)
        else:
            assert schema_errors(item) == [], (path, schema_errors(item))
            records.append(item)
    return records, bad


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_sample_data_reads_cleanly(sample_dir: Path, name: str) -> None:
    fmt, count = SAMPLES[name]
    path = sample_dir / name
    assert detect_format(path) == fmt
    records, bad = read_all(path)
    assert bad == []
    assert len(records) == count
    assert all(r["source"]["format"] == fmt and r["source"]["file"] == str(path) for r in records)
    assert to_table(records).num_rows == count


def test_sample_data_is_small_and_documented(sample_dir: Path) -> None:
    total = sum(p.stat().st_size for p in sample_dir.rglob("*") if p.is_file())
    assert total < 3_000_000
    sources = (sample_dir / "SOURCES.md").read_text(encoding="utf-8")
    for name in SAMPLES:
        assert name in sources, f"{name} is not described in SOURCES.md"


def test_reading_is_deterministic(sample_dir: Path) -> None:
    path = sample_dir / "oasst_en_60_trees.jsonl"
    assert read_all(path, oasst_paths="all") == read_all(path, oasst_paths="all")


@pytest.mark.shared
def test_shared_data_every_record_valid(shared_data: Path) -> None:
    files = {
        "conversations/llamafactory_glaive_toolcall_en_demo_sharegpt.json": 300,
        "conversations/llamafactory_v1_sft_demo_messages.jsonl": 500,
        "instruct/self_instruct_seed_tasks.jsonl": 175,
        "conversations/axolotl_fixtures/conversation.missingturns.json": 1,
    }
    for rel, count in files.items():
        records, bad = read_all(shared_data / rel)
        assert bad == [] and len(records) >= count, rel


def test_sharegpt_tool_calls_and_observations(sample_dir: Path) -> None:
    records, _ = read_all(sample_dir / "glaive_toolcall_100_sharegpt.json")
    first = records[0]
    roles = [m["role"] for m in first["messages"]]
    assert roles[:5] == ["user", "assistant", "user", "assistant", "tool"]
    call = first["messages"][3]["tool_calls"][0]
    assert call["name"] == "search_recipes"
    assert json.loads(call["arguments"]) == {"ingredients": ["chicken", "bell peppers", "rice"]}
    assert json.loads(first["tools"])[0]["name"] == "search_recipes"
    assert sum(1 for r in records if r["tools"]) > 50


def test_sharegpt_ids_follow_content(sample_dir: Path) -> None:
    records, _ = read_all(sample_dir / "fastchat_dummy_conversation_sharegpt.json")
    assert len({r["id"] for r in records}) == 500  # 500 distinct conversations ...
    assert len({r["messages"][0]["content"] for r in records}) == 52  # ... repeating 52 first turns
    again = read_all(sample_dir / "fastchat_dummy_conversation_sharegpt.json")[0]
    assert [r["id"] for r in again] == [r["id"] for r in records]
    assert json.loads(records[0]["meta"]) == {"id": "identity_0"}


def test_pairs_alpaca_selfinstruct_gsm8k(sample_dir: Path) -> None:
    records, _ = read_all(sample_dir / "self_instruct_user_oriented_150.jsonl")
    first = records[0]
    assert first["category"] == "Grammarly"
    user = first["messages"][0]["content"]
    assert user.startswith("The sentence you are given might be too wordy")
    assert "\n\nIf you have any questions about my rate" in user
    assert first["context"] is None
    assert len({r["category"] for r in records}) > 20
    math, _ = read_all(sample_dir / "gsm8k_train_400.jsonl")
    assert {r["category"] for r in math} == {"math"}
    assert math[0]["messages"][1]["content"].endswith("#### 72")


def test_dolly_context_goes_to_turn_and_field(tmp_path: Path) -> None:
    row = {
        "instruction": "When did Virgin Australia start operating?",
        "context": "Virgin Australia commenced services on 31 August 2000 as Virgin Blue.",
        "response": "Virgin Australia commenced services on 31 August 2000.",
        "category": "closed_qa",
    }
    path = tmp_path / "dolly.jsonl"
    path.write_text(json.dumps(row) + "\n" + json.dumps({**row, "context": ""}) + "\n", encoding="utf-8")
    assert detect_format(path) == "dolly"
    (rec, no_context), _ = read_all(path)
    assert rec["context"] == row["context"]
    assert rec["messages"][0]["content"] == row["instruction"] + "\n\n" + row["context"]
    assert rec["category"] == "closed_qa"
    assert no_context["context"] is None and no_context["messages"][0]["content"] == row["instruction"]


def test_oasst_best_path_follows_rank_zero(sample_dir: Path) -> None:
    path = sample_dir / "oasst_en_60_trees.jsonl"
    tree = json.loads(path.read_text(encoding="utf-8").splitlines()[0])
    best, _ = read_all(path)
    every, _ = read_all(path, oasst_paths="all")
    assert len(best) == 60 and len(every) > 3 * len(best)
    first = best[0]
    assert first["messages"][0]["content"] == tree["prompt"]["text"]
    ranked = sorted(tree["prompt"]["replies"], key=lambda r: r.get("rank", 99))
    assert first["messages"][1]["content"] == ranked[0]["text"]
    ids = first["source"]["path"].split("/")
    assert ids[:2] == [tree["prompt"]["message_id"], ranked[0]["message_id"]]
    assert all(r["messages"][-1]["role"] == "assistant" for r in every)
    assert json.loads(first["meta"])["lang"] == "en"
    assert len({r["source"]["path"] for r in every}) == len(every)


def test_oasst_skips_deleted_and_rejected(tmp_path: Path) -> None:
    def msg(mid: str, role: str, text: str, replies: list, **kw: object) -> dict:
        return {"message_id": mid, "role": role, "text": text, "lang": "en", "replies": replies, **kw}

    tree = {
        "message_tree_id": "t1",
        "tree_state": "ready_for_export",
        "prompt": msg("p", "prompter", "What is a prime number?", [
            msg("a0", "assistant", "deleted best", [], rank=0, deleted=True),
            msg("a1", "assistant", "rejected", [], rank=1, review_result=False),
            msg("a2", "assistant", "A number with exactly two divisors.", [
                msg("q", "prompter", "Is 1 prime?", []),
            ], rank=2),
        ]),
    }
    path = tmp_path / "tree.jsonl"
    path.write_text(json.dumps(tree) + "\n", encoding="utf-8")
    (rec,), bad = read_all(path)
    assert bad == []
    assert [m["content"] for m in rec["messages"]] == ["What is a prime number?", "A number with exactly two divisors."]
    assert rec["source"]["path"] == "p/a2"


OSLO = '{"city": "Oslo"}'


def test_openai_content_parts_tool_calls_and_legacy(tmp_path: Path) -> None:
    rows = [
        {"messages": [
            {"role": "system", "content": "You are a weather bot."},
            {"role": "user", "content": [{"type": "text", "text": "Weather in Oslo?"},
                                         {"type": "image_url", "image_url": {"url": "https://x/y.png"}}]},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": OSLO}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "{\"temp_c\": 4}"},
            {"role": "assistant", "content": "It is 4 °C in Oslo.", "weight": 1},
        ], "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]},
        {"messages": [
            {"role": "user", "content": "Add 2 and 3"},
            {"role": "assistant", "content": None, "function_call": {"name": "add", "arguments": '{"a": 2}'}},
            {"role": "function", "name": "add", "content": "5"},
            {"role": "assistant", "content": "2 + 3 = 5"},
        ], "functions": [{"name": "add", "parameters": {"type": "object"}}]},
    ]
    path = tmp_path / "chat.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    (tools, legacy), bad = read_all(path)
    assert bad == []
    assert tools["messages"][1]["content"] == "Weather in Oslo?"
    assert tools["messages"][2]["tool_calls"] == [{"id": "call_1", "name": "get_weather", "arguments": OSLO}]
    assert tools["messages"][3]["tool_call_id"] == "call_1"
    assert json.loads(tools["meta"])["skipped_parts"] == {"image_url": 1}
    assert json.loads(tools["tools"])[0]["function"]["name"] == "get_weather"
    assert legacy["messages"][1]["tool_calls"][0]["name"] == "add"
    assert legacy["messages"][2]["role"] == "tool" and legacy["messages"][2]["name"] == "add"
    assert json.loads(legacy["tools"])[0]["name"] == "add"


def test_chatgpt_real_export_branch_and_tools(sample_dir: Path) -> None:
    (rec,), _ = read_all(sample_dir / "chatgpt_export/conversations.json")
    msgs = rec["messages"]
    assert msgs[0]["role"] == "user" and msgs[0]["content"].startswith("given two random independent variables")
    assert msgs[2]["tool_calls"][0]["name"] == "python" and "sympy" in msgs[2]["tool_calls"][0]["arguments"]
    assert msgs[3] == {"role": "tool", "content": "0", "name": "python", "tool_calls": None, "tool_call_id": None}
    assert msgs[-1]["content"].startswith("Here's the updated graph with the mean split frequency")
    meta = json.loads(rec["meta"])
    assert meta["title"] == "Average Distance in U(0,1)" and meta["hidden_nodes"] == 2 and meta["null_nodes"] == 1
    assert rec["source"]["path"].endswith("875ad56f-8b75-4e69-9fdc-f96acf212f9c")


def _node(nid: str, parent: str | None, role: str, content: dict, **msg: object) -> dict:
    message = {"id": nid, "author": {"role": role, "name": msg.pop("name", None), "metadata": {}},
               "content": content, "recipient": msg.pop("recipient", "all"), "metadata": msg.pop("metadata", {})}
    return {"id": nid, "parent": parent, "children": [], "message": message}


def test_chatgpt_content_types(tmp_path: Path) -> None:
    nodes = [
        {"id": "root", "parent": None, "children": [], "message": None},
        _node("ctx", "root", "user", {"content_type": "user_editable_context", "user_profile": "I am a teacher.",
                                      "user_instructions": "Answer briefly."},
              metadata={"is_user_system_message": True}),
        _node("hid", "ctx", "system", {"content_type": "text", "parts": [""]},
              metadata={"is_visually_hidden_from_conversation": True}),
        _node("u1", "hid", "user", {"content_type": "multimodal_text", "parts": [
            {"content_type": "image_asset_pointer", "asset_pointer": "file-service://file-abc", "width": 10},
            "What is in this picture?"]}),
        _node("th", "u1", "assistant", {"content_type": "thoughts", "thoughts": [{"summary": "look", "content": "x"}]}),
        _node("rr", "th", "assistant", {"content_type": "reasoning_recap", "content": "Thought for 3s"}),
        _node("call", "rr", "assistant", {"content_type": "code", "language": "unknown", "text": "search(\"cats\")"},
              recipient="browser"),
        _node("res", "call", "tool", {"content_type": "tether_browsing_display", "result": "Cats are mammals.",
                                      "summary": None}, name="browser"),
        _node("a1", "res", "assistant", {"content_type": "text", "parts": ["A cat sitting on a mat."]}),
        _node("alt", "u1", "assistant", {"content_type": "text", "parts": ["An abandoned branch."]}),
    ]
    conv = {"title": "Cat picture", "create_time": 1700000000.0, "conversation_id": "c-1", "current_node": "a1",
            "mapping": {n["id"]: n for n in nodes}}
    path = tmp_path / "conversations.json"
    path.write_text(json.dumps([conv]), encoding="utf-8")
    (rec,), bad = read_all(path)
    assert bad == []
    roles = [(m["role"], m["content"]) for m in rec["messages"]]
    assert roles == [
        ("system", "I am a teacher.\n\nAnswer briefly."),
        ("user", "What is in this picture?"),
        ("assistant", ""),
        ("tool", "Cats are mammals."),
        ("assistant", "A cat sitting on a mat."),
    ]
    assert rec["messages"][2]["tool_calls"] == [{"id": None, "name": "browser", "arguments": "search(\"cats\")"}]
    assert rec["messages"][3]["name"] == "browser"
    meta = json.loads(rec["meta"])
    assert meta["dropped_thoughts"] == 1 and meta["dropped_reasoning_recap"] == 1
    assert meta["skipped_image_asset_pointer"] == 1 and meta["hidden_nodes"] == 1


def test_chatgpt_zip_export(sample_dir: Path, tmp_path: Path) -> None:
    archive = tmp_path / "export.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.write(sample_dir / "chatgpt_export/conversations.json", "conversations.json")
        zf.writestr("chat.html", "<html></html>")
    assert detect_format(archive) == "chatgpt"
    (rec,), _ = read_all(archive)
    assert rec["source"]["file"] == f"{archive}!conversations.json"
    assert rec["source"]["format"] == "chatgpt"


def test_claude_blocks_attachments_thinking(sample_dir: Path) -> None:
    sorting, notes, weather = read_all(sample_dir / "claude_export/conversations.json")[0]
    assert json.loads(sorting["meta"])["dropped_thinking"] == 1
    assert "Simple question" not in sorting["messages"][1]["content"]
    assert "[standup_notes.txt]\nStandup 2 April" in notes["messages"][0]["content"]
    roles = [m["role"] for m in weather["messages"]]
    assert roles == ["user", "assistant", "tool", "assistant"]
    assert weather["messages"][1]["tool_calls"][0] == {"id": "toolu_01HkQ3v9X2", "name": "web_search",
                                                       "arguments": "{\"query\":\"Lisbon weather now\"}"}
    assert weather["messages"][2]["tool_call_id"] == "toolu_01HkQ3v9X2"


def test_claude_text_only_messages(tmp_path: Path) -> None:
    conv = {"uuid": "u", "name": "old export", "chat_messages": [
        {"uuid": "1", "sender": "human", "text": "Hi there", "attachments": [], "files": []},
        {"uuid": "2", "sender": "assistant", "text": "Hello! How can I help?", "attachments": [], "files": []},
    ]}
    path = tmp_path / "conversations.json"
    path.write_text(json.dumps([conv]), encoding="utf-8")
    (rec,), _ = read_all(path)
    assert [m["content"] for m in rec["messages"]] == ["Hi there", "Hello! How can I help?"]


PAIRS = [
    {"question_text": "What is the boiling point of water at sea level?", "best": "100 °C.", "topic": "science"},
    {"question_text": "Name a prime number between 10 and 20.", "best": "13 is one.", "topic": "math"},
]
COLUMN_MAP = {"prompt": "question_text", "response": "best", "category": "topic"}


def _check_generic(path: Path) -> None:
    records, bad = read_all(path, "generic", column_map=COLUMN_MAP)
    assert bad == []
    assert [r["messages"][0]["content"] for r in records] == [p["question_text"] for p in PAIRS]
    assert [r["category"] for r in records] == ["science", "math"]
    assert records[1]["source"]["index"] == 1


def test_generic_csv_parquet_jsonl_same_records(tmp_path: Path) -> None:
    csv_path = tmp_path / "qa.csv"
    lines = ["question_text,best,topic"] + [f"\"{p['question_text']}\",\"{p['best']}\",{p['topic']}" for p in PAIRS]
    csv_path.write_bytes(("\ufeff" + "\n".join(lines) + "\n").encode("utf-8"))
    pq_path = tmp_path / "qa.parquet"
    pq.write_table(pa.Table.from_pylist(PAIRS), pq_path)
    jl_path = tmp_path / "qa.jsonl"
    jl_path.write_text("".join(json.dumps(p) + "\n" for p in PAIRS), encoding="utf-8")
    assert detect_format(csv_path) == detect_format(pq_path) == "generic"
    for path in (csv_path, pq_path, jl_path):
        _check_generic(path)
    ids = [[r["id"] for r in read_all(p, "generic", column_map=COLUMN_MAP)[0]] for p in (csv_path, pq_path, jl_path)]
    assert ids[0] == ids[1] == ids[2]


def test_generic_without_known_shape_is_unreadable(tmp_path: Path) -> None:
    path = tmp_path / "qa.csv"
    path.write_text("q,a\nhello,world\n", encoding="utf-8")
    with pytest.raises(UnreadableInput, match="column_map"):
        read_all(path, "generic")


def test_generic_missing_mapped_column_is_quarantined(tmp_path: Path) -> None:
    path = tmp_path / "qa.jsonl"
    path.write_text(json.dumps(PAIRS[0]) + "\n" + json.dumps({"question_text": "x", "topic": "y"}) + "\n",
                    encoding="utf-8")
    records, bad = read_all(path, "generic", column_map=COLUMN_MAP)
    assert len(records) == 1 and len(bad) == 1
    assert "'best' (mapped to response) is missing" in bad[0].reason and bad[0].line == 2


def test_hf_dataset_dir_with_messages_and_pairs(tmp_path: Path, sample_dir: Path) -> None:
    import datasets

    rows = [json.loads(line) for line in (sample_dir / "pirate_training_set.jsonl").read_text("utf-8").splitlines()]
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "chat"))
    assert detect_format(tmp_path / "chat") == "hf_dataset"
    records, bad = read_all(tmp_path / "chat")
    assert bad == [] and len(records) == 10
    reference, _ = read_all(sample_dir / "pirate_training_set.jsonl")
    assert [r["id"] for r in records] == [r["id"] for r in reference]
    pairs = datasets.DatasetDict({"train": datasets.Dataset.from_list(PAIRS[:1]),
                                  "test": datasets.Dataset.from_list(PAIRS[1:])})
    pairs.save_to_disk(str(tmp_path / "pairs"))
    records, _ = read_all(tmp_path / "pairs", column_map=COLUMN_MAP)
    assert [r["source"]["file"] for r in records] == [f"{tmp_path / 'pairs'}[test]", f"{tmp_path / 'pairs'}[train]"]


def test_detect_format_errors_are_actionable(tmp_path: Path) -> None:
    path = tmp_path / "odd.json"
    path.write_text(json.dumps([{"foo": 1, "bar": 2}]), encoding="utf-8")
    with pytest.raises(UnreadableInput, match=r"cannot tell the format.*\['bar', 'foo'\].*format:"):
        detect_format(path)
    with pytest.raises(UnreadableInput, match="no such file"):
        detect_format(tmp_path / "missing.jsonl")
    assert set(FORMATS) >= {"chatgpt", "claude", "sharegpt", "openai", "oasst", "alpaca", "dolly", "generic",
                            "hf_dataset"}


def test_wrong_format_asked_is_unreadable(sample_dir: Path) -> None:
    with pytest.raises(UnreadableInput, match="looks like 'sharegpt'"):
        read_all(sample_dir / "axolotl_conversation.json", "openai")
