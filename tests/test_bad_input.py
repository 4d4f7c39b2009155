"""Bad input never crashes a run and never vanishes: each case becomes a quarantine row or a clear error."""

from __future__ import annotations

import io
import json
import struct
import tracemalloc
import zipfile
from pathlib import Path

import pytest

from curator.ingest import Quarantined, ReaderOptions, UnreadableInput, read_input
from curator.ingest.archive import BombGuard
from curator.record import schema_errors

PIRATE = {"messages": [
    {"role": "system", "content": "You are a helpful pirate assistant."},
    {"role": "user", "content": "Can I play PC games on my Xbox?"},
    {"role": "assistant", "content": "Yarr, Xbox consoles don't natively support PC games, matey. Arrr!"},
]}
SHAREGPT = {"id": "identity_7", "conversations": [
    {"from": "human", "value": "What is your name?"},
    {"from": "gpt", "value": "My name is Vicuna, and I'm a language model developed by LMSYS."},
]}


def split(path: Path, fmt: str | None = None, **opts: object) -> tuple[list[dict], list[Quarantined]]:
    """Records (each schema-valid) and quarantine rows of one input."""
    records, bad = [], []
    for item in read_input(path, path.name, fmt, ReaderOptions(**opts)):
        if isinstance(item, Quarantined):
            bad.append(item)
        else:
            assert schema_errors(item) == []
            records.append(item)
    return records, bad


def jsonl(*rows: object) -> bytes:
    return b"".join((r if isinstance(r, bytes) else json.dumps(r).encode()) + b"\n" for r in rows)


def test_malformed_json_line_is_quarantined_with_line_number(tmp_path: Path) -> None:
    path = tmp_path / "chat.jsonl"
    path.write_bytes(jsonl(PIRATE, b'{"messages": [{"role": "user", "content": "Ahoy"}', b"", PIRATE))
    records, bad = split(path)
    assert len(records) == 2 and [r["source"]["line"] for r in records] == [1, 4]
    (row,) = bad
    assert row.line == 2 and row.index == 1 and row.reason.startswith("line 2: malformed JSON")
    assert row.excerpt.startswith('{"messages"')


@pytest.mark.parametrize(
    ("row", "expected"),
    [
        ({"messages": [{"role": "user", "content": 42}]}, "'messages[0].content' is int, expected a string"),
        ({"messages": {"role": "user", "content": "hi"}}, "'messages' is dict, expected a list of messages"),
        ({"messages": [{"content": "no role here"}]}, "message 1: 'role' is None, expected one of"),
        ({"messages": []}, "'messages' is empty"),
    ],
)
def test_wrong_types_and_missing_roles_openai(tmp_path: Path, row: dict, expected: str) -> None:
    path = tmp_path / "chat.jsonl"
    path.write_bytes(jsonl(PIRATE, row))
    records, bad = split(path, "openai")
    assert len(records) == 1
    assert len(bad) == 1 and expected in bad[0].reason and bad[0].line == 2


def test_sharegpt_unknown_role_reason_names_the_turn(tmp_path: Path) -> None:
    bot = {"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"},
                             {"from": "bot", "value": "?"}]}
    missing = {"conversations": [{"value": "who am I?"}]}
    path = tmp_path / "share.json"
    path.write_text(json.dumps([SHAREGPT, bot, missing]), encoding="utf-8")
    records, bad = split(path, "sharegpt")
    assert len(records) == 1
    assert bad[0].reason.startswith("turn 3: 'from' is 'bot', expected one of human/user/gpt/")
    assert bad[0].index == 1 and bad[0].field == "conversations[2].from"
    assert bad[1].reason.startswith("turn 1: 'from' is None")


def test_empty_turns_are_kept_for_the_quality_step(tmp_path: Path) -> None:
    row = {"conversations": [{"from": "human", "value": "Explain recursion."}, {"from": "gpt", "value": ""}]}
    path = tmp_path / "share.jsonl"
    path.write_bytes(jsonl(row))
    (rec,), bad = split(path)
    assert bad == [] and rec["messages"][1]["content"] == ""


def test_invalid_utf8_jsonl_line_quarantined_with_offset(tmp_path: Path) -> None:
    bad_line = b'{"messages": [{"role": "user", "content": "caf\xe9 au lait"}]}'
    first = jsonl(PIRATE)
    path = tmp_path / "chat.jsonl"
    path.write_bytes(first + bad_line + b"\n" + jsonl(PIRATE))
    records, bad = split(path)
    assert len(records) == 2
    offset = len(first) + bad_line.index(b"\xe9")
    assert bad[0].line == 2 and f"invalid UTF-8 at byte offset {offset}" in bad[0].reason


def test_invalid_utf8_json_array_keeps_the_rest(tmp_path: Path) -> None:
    good = json.dumps(SHAREGPT).encode()
    broken = good.replace(b"Vicuna", b"Vic\xffuna")
    body = b"[" + good + b",\n" + broken + b",\n" + good.replace(b"identity_7", b"identity_8") + b"]"
    path = tmp_path / "share.json"
    path.write_bytes(body)
    records, bad = split(path)
    assert [json.loads(r["meta"])["id"] for r in records] == ["identity_7", "identity_8"]
    assert len(bad) == 1 and bad[0].index == 1
    offset = body.index(b"\xff")
    assert f"invalid UTF-8 at byte offset {offset}" in bad[0].reason


def test_bom_is_stripped(tmp_path: Path) -> None:
    jl = tmp_path / "chat.jsonl"
    jl.write_bytes(b"\xef\xbb\xbf" + jsonl(PIRATE, PIRATE))
    arr = tmp_path / "share.json"
    arr.write_bytes(b"\xef\xbb\xbf" + json.dumps([SHAREGPT]).encode())
    assert len(split(jl)[0]) == 2 and split(jl)[1] == []
    assert len(split(arr)[0]) == 1 and split(arr)[1] == []


def test_u2028_inside_strings_never_splits_a_record(tmp_path: Path) -> None:
    text = "First line\u2028second line\u2029third\x85fourth"
    row = {"messages": [{"role": "user", "content": text}, {"role": "assistant", "content": "ok"}]}
    path = tmp_path / "chat.jsonl"
    path.write_bytes(json.dumps(row, ensure_ascii=False).encode() + b"\n" + jsonl(PIRATE))
    records, bad = split(path)
    assert bad == [] and len(records) == 2
    assert records[0]["messages"][0]["content"] == text


@pytest.mark.parametrize("kind", ["jsonl", "json"])
def test_truncated_file_keeps_records_before(tmp_path: Path, kind: str) -> None:
    rows = [SHAREGPT] * 3
    data = jsonl(*rows) if kind == "jsonl" else json.dumps(rows, indent=2).encode()
    path = tmp_path / f"share.{kind}"
    path.write_bytes(data[: len(data) - 40])
    records, bad = split(path)
    assert len(records) == 2
    assert len(bad) == 1 and bad[0].reason.startswith("file ends inside record 2 (truncated?)")


def _zip(path: Path, members: dict[str, bytes], method: int = zipfile.ZIP_DEFLATED) -> Path:
    with zipfile.ZipFile(path, "w", method) as zf:
        for name, data in members.items():
            zf.writestr(zipfile.ZipInfo(name), data, compress_type=method)
    return path


def test_zip_member_escaping_the_target_is_refused(tmp_path: Path, sample_dir: Path) -> None:
    export = (sample_dir / "chatgpt_export/conversations.json").read_bytes()
    for evil in ("../conversations.json", "/tmp/conversations.json"):
        archive = _zip(tmp_path / "evil.zip", {evil: export})
        with pytest.raises(UnreadableInput, match=r"refused: .*conversations\.json"):
            list(read_input(archive, "evil.zip", "chatgpt", ReaderOptions()))
    mixed = _zip(tmp_path / "mixed.zip", {"../../etc/cron.d/x": b"* * * * * boom", "conversations.json": export})
    records, bad = split(mixed, "chatgpt")
    assert len(records) == 1 and bad == []


def test_zip_bomb_refused_from_headers(tmp_path: Path) -> None:
    archive = _zip(tmp_path / "bomb.zip", {"conversations.json": b"[" + b" " * 30_000_000 + b"]"})
    with pytest.raises(UnreadableInput, match=r"bomb.zip!conversations.json.*max_compression_ratio=200"):
        list(read_input(archive, "bomb.zip", "chatgpt", ReaderOptions()))
    with pytest.raises(UnreadableInput, match=r"max_archive_bytes=1 MiB"):
        list(read_input(archive, "bomb.zip", "chatgpt", ReaderOptions(max_archive_bytes=1024 * 1024)))


def test_zip_bomb_with_lying_headers(tmp_path: Path) -> None:
    data = b"[" + b" " * 30_000_000 + b"]"
    archive = _zip(tmp_path / "liar.zip", {"conversations.json": data})
    raw = bytearray(archive.read_bytes())
    # Rewrite the uncompressed size in the local and central headers to claim a harmless 1000 bytes.
    local = raw.index(b"PK\x03\x04")
    struct.pack_into("<I", raw, local + 22, 1000)
    central = raw.index(b"PK\x01\x02")
    struct.pack_into("<I", raw, central + 24, 1000)
    archive.write_bytes(bytes(raw))
    with pytest.raises(UnreadableInput, match=r"liar\.zip"):
        list(read_input(archive, "liar.zip", "chatgpt", ReaderOptions()))
    # The streaming guard itself counts inflated bytes, whatever the header says.
    info = zipfile.ZipInfo("conversations.json")
    info.compress_size, info.file_size = 1000, 1000
    guard = io.BufferedReader(BombGuard(io.BytesIO(data), info, "liar.zip", 4 * 1024**3, 200.0))
    with pytest.raises(UnreadableInput, match=r"liar.zip!conversations.json: refusing a possible decompression bomb"):
        while guard.read(65536):
            pass


def test_50mb_record_quarantined_without_holding_it(tmp_path: Path) -> None:
    big = {"messages": [{"role": "user", "content": "x" * 50_000_000}, {"role": "assistant", "content": "ok"}]}
    path = tmp_path / "big.jsonl"
    path.write_bytes(jsonl(PIRATE) + json.dumps(big).encode() + b"\n" + jsonl(PIRATE))
    del big
    tracemalloc.start()
    records, bad = split(path)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert len(records) == 2
    assert bad[0].reason == "record 1 is 50.0 MB, above ingest.max_record_bytes=16 MiB; raise it to keep it"
    assert bad[0].line == 2
    assert peak < 24 * 1024 * 1024  # one line buffer of max_record_bytes, never the 50 MB line


def test_oversized_record_in_json_array(tmp_path: Path) -> None:
    big = {"conversations": [{"from": "human", "value": "y" * 300_000}, {"from": "gpt", "value": "ok"}]}
    path = tmp_path / "share.json"
    path.write_text(json.dumps([SHAREGPT, big, SHAREGPT]), encoding="utf-8")
    records, bad = split(path, max_record_bytes=100_000)
    assert len(records) == 2
    assert bad[0].index == 1 and "above ingest.max_record_bytes=100000 bytes" in bad[0].reason


def test_cp1252_csv_rows_quarantined(tmp_path: Path) -> None:
    path = tmp_path / "qa.csv"
    text = "prompt,response\nWhat is 2+2?,4\nSay caf\u00e9 in French,caf\u00e9\nName a colour,blue\n"
    good = text.encode("utf-8")
    path.write_bytes(good.replace("caf\u00e9 in".encode(), "caf\u00e9 in".encode("cp1252")))
    records, bad = split(path, "generic")
    assert [r["messages"][0]["content"] for r in records] == ["What is 2+2?", "Name a colour"]
    assert bad[0].line == 3 and "column 'prompt'" in bad[0].reason and "iconv -f cp1252" in bad[0].reason


def test_unreadable_inputs_name_file_and_fix(tmp_path: Path) -> None:
    with pytest.raises(UnreadableInput, match=r"missing\.jsonl: no such file"):
        list(read_input(tmp_path / "missing.jsonl", "missing.jsonl", None, ReaderOptions()))
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"")
    with pytest.raises(UnreadableInput, match="empty"):
        list(read_input(empty, "empty.jsonl", None, ReaderOptions()))
    utf16 = tmp_path / "u16.jsonl"
    utf16.write_bytes(json.dumps(PIRATE).encode("utf-16"))
    with pytest.raises(UnreadableInput, match="UTF-16"):
        list(read_input(utf16, "u16.jsonl", "openai", ReaderOptions()))
    fine = tmp_path / "x.jsonl"
    fine.write_bytes(jsonl(PIRATE))
    with pytest.raises(UnreadableInput, match="unknown format 'yaml'"):
        list(read_input(fine, "x.jsonl", "yaml", ReaderOptions()))


def test_unexpected_structure_is_quarantined_not_raised(tmp_path: Path) -> None:
    good = {"uuid": "c1", "name": "ok", "chat_messages": [
        {"uuid": "m1", "sender": "human", "text": "Translate 'cat' to French.", "attachments": [], "files": []},
        {"uuid": "m2", "sender": "assistant", "text": "Chat.", "attachments": [], "files": []},
    ]}
    odd = {**good, "chat_messages": [{**good["chat_messages"][0], "attachments": 5}]}
    path = tmp_path / "conversations.json"
    path.write_text(json.dumps([good, odd, good]), encoding="utf-8")
    records, bad = split(path, "claude")
    assert len(records) == 2
    assert bad[0].index == 1 and "unexpected structure (TypeError" in bad[0].reason
