"""Issue 16, end to end: each input that used to hang, crash or misread a run, on a file the test writes.

Every run here must finish, write a report whose counts reconcile, and give a reason a person can
act on; an input that cannot be read at all stops the run before any work with a message naming it.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from test_fuzz_readers import time_limit

from curator import api
from curator.cli import main
from curator.config import ConfigError, InputSpec, load_config, read_yaml_mapping, validate_as
from curator.engines.plan import build_steps
from curator.ingest import Note, Quarantined, ReaderOptions, UnreadableInput, read_input
from curator.record import RECORD_SCHEMA
from curator.steps.base import ROW, MapStep, decide

ROOT = Path(__file__).resolve().parent.parent
FAST = {"pii": {"enabled": False}}


def curate(tmp_path: Path, inputs: list[Path], fmt: str | None = None, **overrides: Any) -> api.CurateResult:
    """One run (PII off) that must finish in time and reconcile; returns its result."""
    cfg = load_config(None, {**FAST, **overrides})
    with time_limit(300):
        result = api.curate(cfg, tmp_path / "out", inputs=inputs, format=fmt, progress=False)
    c = result.counts
    assert c["read"] == c["kept"] + c["dropped"] + c["quarantined"]
    assert (tmp_path / "out" / "report.json").exists() and (tmp_path / "out" / "report.html").exists()
    return result


def chat(user: str, answer: str) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]}


def node(nid: str, role: str, text: str, parent: str | None = None, children: list[str] | None = None,
         t: float | None = None, typed: bool = True) -> dict[str, Any]:
    content: dict[str, Any] = {"parts": [text]}
    if typed:
        content["content_type"] = "text"
    out: dict[str, Any] = {"id": nid, "message": {"id": nid, "author": {"role": role}, "content": content,
                                                  "create_time": t}}
    if parent is not None:
        out["parent"] = parent
    if children is not None:
        out["children"] = children
    return out


# 1. ------------------------------------------------------------------------------------------------


def test_chatgpt_children_cycle_without_current_node_ends(tmp_path: Path) -> None:
    cycle = {"title": "loop", "mapping": {
        "a": node("a", "user", "Why is the sky blue?", children=["b"]),
        "b": node("b", "assistant", "Rayleigh scattering of sunlight.", children=["a"]),
    }}
    good = {"title": "fine", "current_node": "y", "mapping": {
        "x": node("x", "user", "Name a primary colour.", parent=None, children=["y"]),
        "y": node("y", "assistant", "Red is a primary colour of light and paint.", parent="x"),
    }}
    path = tmp_path / "conversations.json"
    path.write_text(json.dumps([cycle, good]))
    result = curate(tmp_path, [path])
    assert result.counts == {"read": 2, "kept": 1, "dropped": 0, "quarantined": 1}
    (row,) = pl.read_parquet(tmp_path / "out" / "quarantine.parquet").to_dicts()
    assert row["index"] == 0 and "cycle" in row["reason"]


# 2. ------------------------------------------------------------------------------------------------

ENGLISH = [chat(f"What is the capital of country number {i}?", f"The capital of country {i} is a fine old city.")
           for i in range(6)]


@pytest.mark.parametrize(("case", "overrides"), [
    ("empty_answer", {}),
    ("german_only", {"quality": {"languages": ["de"]}}),
    ("german_only_no_exact", {"quality": {"languages": ["de"]}, "dedup": {"exact": {"enabled": False}}}),
    ("all_quarantined", {}),  # (semantic dedup on zero rows: the step test below)
])
def test_no_row_reaches_dedup(tmp_path: Path, case: str, overrides: dict[str, Any]) -> None:
    path = tmp_path / "in.jsonl"
    rows = [chat("Explain recursion.", "")] if case == "empty_answer" else ENGLISH
    body = "".join(json.dumps(r) + "\n" for r in rows)
    if case == "all_quarantined":  # a small ChatGPT-like export whose every record is broken
        body = '{"messages": [}\n{"messages": 5}\n{"messages": [{"role": "wizard", "content": "hi"}]}\n'
    path.write_text(body)
    out = tmp_path / "out"
    cfg = tmp_path / "c.yaml"
    cfg.write_text(json.dumps({**FAST, **overrides}))
    assert main(["curate", str(path), "--out", str(out), "--config", str(cfg), "--workers", "1",
                 *(["--format", "openai"] if case == "all_quarantined" else [])]) == 0
    report = json.loads((out / "report.json").read_text())
    acct = report["accounting"]
    assert acct["kept"] == 0 and acct["read"] == acct["dropped"] + acct["quarantined"] == len(body.splitlines())
    expected = {"empty_answer": "empty_turn", "german_only": "language_not_selected",
                "german_only_no_exact": "language_not_selected"}
    if case in expected:
        assert acct["dropped_by_reason"] == {expected[case]: len(rows)}
    else:  # the reasons are in the report, not hidden in _work/
        assert sum(acct["quarantined_by_reason"].values()) == 3
        assert any("'messages' is int" in r for r in acct["quarantined_by_reason"])


@pytest.mark.slow  # builds every step, the embedding model and spaCy included
def test_every_step_handles_a_zero_row_batch_and_partial() -> None:
    benchmark = {"name": "gsm8k", "path": str(ROOT / "sample_data" / "gsm8k_train_400.jsonl")}
    cfg = load_config(None, {"decontam": {"benchmarks": [benchmark]}, "dedup": {"semantic": {"enabled": True}}})
    frame = pl.from_arrow(pa.Table.from_pylist([], schema=RECORD_SCHEMA)).with_columns(pl.Series(ROW, [], pl.Int64))
    steps = build_steps(cfg)
    assert {s.name for s in steps} >= {"normalize", "quality", "exact_dedup", "minhash_dedup", "semantic_dedup",
                                      "dedup_clusters", "decontaminate", "pii"}
    for step in steps:
        if isinstance(step, MapStep):
            frame = step(frame)
        else:
            assert step.reduce([]).height == 0  # no partial at all (no part reached the step)
            annotation = step.reduce([step.map(frame)])  # a zero-row partial
            frame = frame.join(annotation, on=ROW, how="left")
    decided = decide(frame, [r for s in steps for r in s.rules()])  # every rule finds its columns
    assert decided.height == 0 and "drop_reason" in decided.columns


# 3. ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("container", ["array", "document", "jsonl"])
def test_deep_nesting_is_quarantined_not_fatal(tmp_path: Path, container: str) -> None:
    deep = b'{"messages": [{"role": "user", "content": ' + b"[" * 10_000 + b'"x"' + b"]" * 10_000 + b"}]}"
    fine = json.dumps(chat("What is 2 + 2?", "2 + 2 = 4, because adding two and two gives four.")).encode()
    path = tmp_path / ("chat.jsonl" if container == "jsonl" else "chat.json")
    body = {"array": b"[" + fine + b"," + deep + b"]", "document": fine + b" " + deep, "jsonl": fine + b"\n" + deep}
    path.write_bytes(body[container])
    result = curate(tmp_path, [path], fmt="openai")
    assert result.counts == {"read": 2, "kept": 1, "dropped": 0, "quarantined": 1}
    (row,) = pl.read_parquet(tmp_path / "out" / "quarantine.parquet").to_dicts()
    assert row["index"] == 1 and row["excerpt"].startswith("{")
    jsonl = "nested deeper than the JSON parser's limit"
    expected = jsonl if container == "jsonl" else "'messages[0].content[0]' is list"
    assert expected in row["reason"]


# 4. ------------------------------------------------------------------------------------------------


def test_chatgpt_export_shapes_over_the_years(tmp_path: Path) -> None:
    parents_only = {"title": "parent links only", "mapping": {  # no current_node, no children, untyped parts
        "r": {"id": "r", "message": None, "parent": "client-created-root"},
        "u": node("u", "user", "Suggest a name for a cat.", parent="r", t=1.0, typed=False),
        "old": node("old", "assistant", "Whiskers is a classic name.", parent="u", t=2.0, typed=False),
        "new": node("new", "assistant", "Miso is short and friendly.", parent="u", t=3.0, typed=False),
    }}
    children_only = {"title": "children links only", "create_time": 1.6e9, "mapping": {
        "r": {"id": "r", "message": None, "children": ["u"]},
        "u": node("u", "user", "Translate 'thank you' to Spanish.", children=["a"]),
        "a": node("a", "assistant", "Gracias means thank you in Spanish.", children=[]),
    }}
    path = tmp_path / "conversations.json"
    path.write_text(json.dumps([parents_only, children_only]))
    records = [r for r in read_input(path, path.name, None, ReaderOptions()) if isinstance(r, dict)]
    assert [[m["content"] for m in r["messages"]] for r in records] == [
        ["Suggest a name for a cat.", "Miso is short and friendly."],  # the newest leaf
        ["Translate 'thank you' to Spanish.", "Gracias means thank you in Spanish."],
    ]
    meta = json.loads(records[0]["meta"])
    assert meta["branch"].startswith("newest leaf (no current_node; 2 leaves)")
    assert meta["root_parent_missing"] == "client-created-root"
    assert curate(tmp_path, [path]).counts["quarantined"] == 0


# 5. ------------------------------------------------------------------------------------------------


def test_csv_with_broken_quoting_loses_no_row_silently(tmp_path: Path) -> None:
    path = tmp_path / "qa.csv"
    path.write_text('prompt,response\nWhat is 2+2?,4 is the sum of two and two\n"Unclosed quote here,5\n'
                    '"Name a color",Blue is a colour of the sky\n\nWhat is H2O?,Water is H2O\n')  # a blank line too
    result = curate(tmp_path, [path])
    assert result.counts["read"] == 4 and result.counts["quarantined"] == 1  # 4 data rows, 4 accounted for
    (row,) = pl.read_parquet(tmp_path / "out" / "quarantine.parquet").to_dicts()
    assert row["line"] == 3 and "line 3: a quoted field opened on this line runs on to line 4" in row["reason"]
    kept = pl.read_parquet(tmp_path / "out" / "kept" / "*.parquet")
    prompts = {m[0]["content"] for m in kept["messages"].to_list()}
    assert prompts == {"What is 2+2?", "Name a color", "What is H2O?"}


# 6. ------------------------------------------------------------------------------------------------

EXPORTS = {
    "discord.json": ({"guild": {"id": "1", "name": "Guild"}, "channel": {"id": "2", "name": "general"},
                      "messages": [{"id": "3", "type": "Default", "timestamp": "2024-01-01T10:00:00+00:00",
                                    "content": "hello", "author": {"id": "4", "name": "ana"}}]}, "a Discord export"),
    "result.json": ({"name": "Ana", "type": "personal_chat", "id": 1, "messages": [
        {"id": 1, "type": "message", "date": "2024-01-01T10:00:00", "date_unixtime": "1704103200", "from": "Ana",
         "from_id": "user1", "text": "hi", "text_entities": []}]}, "a Telegram export"),
    "message_1.json": ({"participants": [{"name": "Ana"}, {"name": "Ben"}], "messages": [
        {"sender_name": "Ana", "timestamp_ms": 1704103200000, "content": "hi"}], "title": "Ana",
        "thread_path": "inbox/ana_1"}, "a Messenger/Instagram export"),
    "chat.txt": ("12/31/23, 10:15 PM - Ana: Happy new year!\n12/31/23, 10:16 PM - Ben: You too!\n",
                 "a WhatsApp chat export"),
}


@pytest.mark.parametrize("name", sorted(EXPORTS))
def test_chat_exports_are_read_by_their_reader_not_misread(tmp_path: Path, name: str) -> None:
    content, label = EXPORTS[name]
    path = tmp_path / name
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    result = api.curate(load_config(None, FAST), tmp_path / "out", inputs=[path], progress=False)
    messages = result.report["accounting"]["messages"]["by_input"][str(path)]
    assert result.counts["quarantined"] == 0 and messages["read"] == (2 if name == "chat.txt" else 1)
    assert result.counts["read"] == messages["samples"] == messages["read"] - 1  # every reply is a sample
    with pytest.raises(UnreadableInput, match=f"looks like {label}, not 'openai' data"):  # a forced format
        api.curate(load_config(None, FAST), tmp_path / "out2", inputs=[path], format="openai", progress=False)


def test_an_export_no_reader_takes_is_named_before_any_work(tmp_path: Path) -> None:
    path = tmp_path / "messages.json"  # Discord's own data package: messages/c<id>/messages.json
    path.write_text(json.dumps([{"ID": 1, "Timestamp": "2024-01-01 10:00:00", "Contents": "hi", "Attachments": ""}]))
    with pytest.raises(UnreadableInput, match="unsupported format: looks like a Discord data package"):
        api.curate(load_config(None, FAST), tmp_path / "out", inputs=[path], progress=False)
    assert not (tmp_path / "out" / "_work").exists()
    day = tmp_path / "2024-01-01.json"  # one day file of a Slack export, without users.json/channels.json
    day.write_text(json.dumps([{"type": "message", "user": "U1", "text": "hi", "ts": "1704103200.000100"}]))
    with pytest.raises(UnreadableInput, match="looks like part of a Slack export, which is read whole: pass the"):
        api.curate(load_config(None, FAST), tmp_path / "out", inputs=[day], progress=False)


def test_slack_export_directory_is_one_input(tmp_path: Path) -> None:
    export = tmp_path / "slack"
    (export / "general").mkdir(parents=True)
    (export / "users.json").write_text(json.dumps([{"id": "U1", "name": "ana"}, {"id": "U2", "name": "ben"}]))
    (export / "channels.json").write_text(json.dumps([{"id": "C1", "name": "general"}]))
    (export / "general" / "2024-01-01.json").write_text(json.dumps([
        {"type": "message", "user": "U1", "text": "how do I reset my password?", "ts": "1704103200.000100"},
        {"type": "message", "user": "U2", "text": "Settings, then Security, then Reset.", "ts": "1704103260.000100"},
    ]))
    result = api.curate(load_config(None, FAST), tmp_path / "out", inputs=[export], progress=False)
    assert [row["input"] for row in result.report["inputs"]] == [str(export)]  # the directory, not its files
    assert result.counts["read"] == 1 and result.counts["quarantined"] == 0


# 7. ------------------------------------------------------------------------------------------------


def test_claude_export_directory_skips_side_files_and_reports_them(tmp_path: Path, capsys: Any) -> None:
    export = tmp_path / "claude-export"
    export.mkdir()
    (export / "conversations.json").write_bytes((ROOT / "sample_data" / "claude_export" / "conversations.json")
                                                .read_bytes())
    (export / "users.json").write_text(json.dumps([{"uuid": "u1", "full_name": "Ana", "email_address": "a@x.org"}]))
    (export / "projects.json").write_text(json.dumps([{"uuid": "p1", "name": "Notes", "docs": []}]))
    (export / "memories.json").write_text(json.dumps([{"conversations_memory": "", "account_uuid": "u1"}]))
    (export / "README.md").write_text("Claude export\n")
    os.symlink(tmp_path / "gone.json", export / "old.json")
    out = tmp_path / "out"
    assert main(["curate", str(export), "--out", str(out), "--workers", "1", "--config", str(_fast(tmp_path))]) == 0
    report = json.loads((out / "report.json").read_text())
    skipped = {Path(s["path"]).name: s["reason"] for s in report["skipped_inputs"]}
    assert set(skipped) == {"users.json", "projects.json", "memories.json", "README.md", "old.json"}
    assert "Claude export's account file" in skipped["users.json"]
    assert skipped["old.json"].startswith("a broken symbolic link")
    assert report["accounting"]["read"] == 3
    assert "Skipped files (5)" in (out / "report.html").read_text()
    err = capsys.readouterr().err
    assert "skipped 5 file(s)" in err and "broken symbolic link" in err
    # named explicitly, a side file is an input like any other: it stops the run before any work
    with pytest.raises(UnreadableInput, match=r"users\.json: cannot tell the format"):
        api.curate(load_config(None, FAST), tmp_path / "out2", inputs=[export / "users.json"], progress=False)
    assert not (tmp_path / "out2" / "_work").exists()


def _fast(tmp_path: Path) -> Path:
    path = tmp_path / "fast.yaml"
    path.write_text("pii: {enabled: false}\n")
    return path


def _pairs(n: int) -> list[dict[str, str]]:
    return [{"prompt": f"What is {i} plus {i}?", "response": f"{i} plus {i} is {2 * i}, by adding."} for i in range(n)]


def test_corrupt_parquet_is_caught_before_any_work_or_counted(tmp_path: Path) -> None:
    good = tmp_path / "good.parquet"
    pq.write_table(pa.Table.from_pylist(_pairs(40)), good, row_group_size=10, compression="none")
    data = good.read_bytes()
    footer = tmp_path / "footer.parquet"
    size = int.from_bytes(data[-8:-4], "little")  # the footer's length, before the closing magic bytes
    garbage = bytes(range(256)) * (size // 256 + 1)
    footer.write_bytes(data[: -8 - size] + garbage[:size] + data[-8:])  # magic bytes intact, footer garbage
    with pytest.raises(UnreadableInput, match=r"footer.parquet: not a readable Parquet file"):
        api.curate(load_config(None, FAST), tmp_path / "out", inputs=[footer], progress=False)
    assert not (tmp_path / "out" / "_work").exists()
    # a corrupt later row group: the rows before are kept, each lost row is counted with the reason
    meta = pq.ParquetFile(good).metadata
    start = meta.row_group(2).column(0).data_page_offset
    middle = tmp_path / "middle.parquet"
    middle.write_bytes(data[:start] + b"\xff" * 64 + data[start + 64:])
    result = curate(tmp_path, [middle])
    assert result.counts["read"] == 40 and result.counts["quarantined"] == 10  # rows 20-29, group 2 only
    quarantine = pl.read_parquet(tmp_path / "out" / "quarantine.parquet")
    assert quarantine["index"].to_list() == list(range(20, 30))
    assert quarantine["reason"][0].startswith("rows 20-29 (row group 2) cannot be read")


# 8. ------------------------------------------------------------------------------------------------


def test_report_reason_kinds_keep_field_names(tmp_path: Path) -> None:
    path = tmp_path / "chat.jsonl"
    path.write_text(json.dumps(chat("Hi there, who are you?", "A helpful assistant, at your service.")) + "\n"
                    + '{"messages": []}\n{"messages": [{"role": "wizard", "content": "x"}]}\n')
    reasons = curate(tmp_path, [path], fmt="openai").report["accounting"]["quarantined_by_reason"]
    assert "'messages' is empty" in reasons
    assert "message N: 'role' is '…', expected one of system/developer/user/assistant/tool" in reasons


def test_resume_removes_what_a_killed_run_left(tmp_path: Path) -> None:
    path = tmp_path / "chat.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in ENGLISH))
    curate(tmp_path, [path])
    work = tmp_path / "out" / "_work"
    leftovers = [work / "ingest" / ".i0000-b000001.parquet.x1.tmp", tmp_path / "out" / ".report.json.x2.tmp",
                 work / "minhash_spill" / "part-00000000000000000000-dead.parquet"]
    for f in leftovers:
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_bytes(b"half")
    for annotation in (work / "global").glob("*.parquet"):  # the dedup phases did not finish
        annotation.unlink()
    curate(tmp_path, [path])
    assert not any(f.exists() for f in leftovers)
    assert not (work / "minhash_spill").exists() or not any((work / "minhash_spill").iterdir())


def test_small_ones_nul_split_parts_placeholders_headerless_csv(tmp_path: Path) -> None:
    share = tmp_path / "sharegpt.json"
    share.write_text(json.dumps([
        {"id": "abc_0", "conversations": [{"from": "human", "value": "Give me a simple recipe for soup."},
                                          {"from": "gpt", "value": "Here is a simple\u0000recipe: boil water."}]},
        {"id": "abc_1", "conversations": [{"from": "gpt", "value": "Then add the vegetables and salt."},
                                          {"from": "human", "value": "How long should it simmer?"},
                                          {"from": "gpt", "value": "About twenty minutes, until tender."}]},
        {"id": "identity_0", "conversations": [{"from": "human", "value": "Who are you?"},
                                               {"from": "gpt", "value": "I am {{name}}, trained by {{author}}."}]},
    ]))
    mmlu = tmp_path / "mmlu.csv"
    mmlu.write_text("Which planet is largest?,Mars,Jupiter,Venus,Earth,B\n"
                    "Which gas do plants absorb?,Oxygen,Nitrogen,Carbon dioxide,Helium,C\n")
    result = api.curate(load_config(None, FAST), tmp_path / "out", inputs=[share], progress=False)
    kept = {json.loads(r["meta"])["id"]: r for r in pl.read_parquet(tmp_path / "out" / "kept" / "*.parquet")
            .to_dicts()}
    assert kept["abc_0"]["messages"][1]["content"] == "Here is a simple recipe: boil water."
    assert [m["role"] for m in kept["abc_1"]["messages"]] == ["user", "assistant"]  # the leading answer trimmed
    assert result.report["repairs"]["leading_turns_trimmed"]["records"] == 1
    assert result.report["accounting"]["dropped_by_reason"] == {"unfilled_placeholder": 1}
    # a CSV without a header row keeps its first item, and the report says how it was read
    cfg = load_config(None, FAST)
    cfg.inputs = [InputSpec(path=str(mmlu), column_map={"prompt": "column_1", "response": "column_3"})]
    result = api.curate(cfg, tmp_path / "out2", progress=False)
    assert result.counts["kept"] == 2
    (note,) = result.report["inputs"][0]["notes"]
    assert note.startswith("no header row: line 1 holds a sentence ('Which planet is largest?')")
    assert "column_1..column_6" in note
    # the column_map alone says so too, when the first row looks like names
    named = tmp_path / "named.csv"
    named.write_text("Mercury,Venus\nEarth,Mars is red\n")
    items = list(read_input(named, named.name, "generic", ReaderOptions(column_map={"prompt": "column_1",
                                                                                   "response": "column_2"})))
    assert isinstance(items[0], Note) and "positional columns" in items[0].message
    assert [i["messages"][0]["content"] for i in items[1:]] == ["Mercury", "Earth"]
    assert not any(isinstance(i, Quarantined) for i in items)


# 9. ------------------------------------------------------------------------------------------------


def _readme_blocks(lang: str) -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    return re.findall(rf"^```{lang}\n(.*?)^```", text, flags=re.M | re.S)


def test_every_readme_yaml_example_is_a_valid_config(tmp_path: Path) -> None:
    from curator.config import CurateConfig
    from curator.select.loop import LoopConfig
    from trainer.config import TrainConfig

    blocks = _readme_blocks("yaml")
    assert blocks, "the README shows YAML examples"
    for i, block in enumerate(blocks):
        path = tmp_path / f"readme_{i}.yaml"
        path.write_text(block)
        data = read_yaml_mapping(path)
        # each block is a curate, loop or trainer config, told apart by its keys
        model = next((m for m in (CurateConfig, LoopConfig, TrainConfig) if set(data) <= set(m.model_fields)), None)
        assert model is not None, f"README yaml block {i} is no known config: keys {sorted(data)}"
        validate_as(model, data, f"README.md yaml block {i}")


def test_every_readme_python_example_compiles_against_the_api() -> None:
    for block in _readme_blocks("python"):
        compile(block, "README.md", "exec")
        for name in re.findall(r"\bapi\.(\w+)", block):
            assert hasattr(api, name), f"README uses api.{name}, which does not exist"


def test_yaml_on_key_and_the_old_loaders_error() -> None:
    import yaml

    assert read_yaml_mapping.__module__ == "curator.config"
    cfg = validate_as(type(load_config(None)), {"dedup": {"exact": {"on": "prompt"}}}, "x")
    assert cfg.dedup.exact.on == "prompt"
    with pytest.raises(ConfigError, match="quote them"):
        validate_as(type(load_config(None)), yaml.safe_load("dedup: {exact: {on: prompt}}"), "x")
