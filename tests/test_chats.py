"""Chat exports (issue 14): Slack, Discord, Telegram, WhatsApp, Messenger -> sessions -> samples, accounted.

Fixtures (sample_data/chats/, see SOURCES.md): LangChain's WhatsApp and Telegram test files and
whatsapp-chat-parser's sample (MIT, byte-for-byte), and exports written here in each owner's
documented shape where no permissive real export exists.
"""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import pytest

from curator.config import CurateConfig, InputSpec
from curator.ingest import FORMATS, MessageTally, Quarantined, ReaderOptions, UnreadableInput, detect_format, read_input
from curator.ingest.base import ChatOptions
from curator.ingest.chats import is_chat_export_dir
from curator.ingest.chats.build import build_samples
from curator.ingest.chats.messenger import fix_mojibake
from curator.ingest.chats.model import Chat, ChatMessage
from curator.record import schema_errors

CHATS = Path(__file__).resolve().parent.parent / "sample_data" / "chats"

# fixture -> (format, samples, messages read) under the default rule
FIXTURES = {
    "slack_export": ("slack", 11, 27),
    "discord_beginners.json": ("discord", 5, 11),
    "telegram_langchain/result.json": ("telegram", 2, 4),
    "telegram_group/result.json": ("telegram", 5, 14),
    "whatsapp_langchain.txt": ("whatsapp", 1, 8),
    "whatsapp_short_chat.txt": ("whatsapp", 0, 5),
    "whatsapp_ios_family.txt": ("whatsapp", 3, 13),
    "messenger_export": ("messenger", 3, 9),
}


def read(path: Path, fmt: str | None = None, **chat: object) -> tuple[list[dict], list[Quarantined], MessageTally]:
    """Records, quarantine rows and the message tally of one input (records checked against the schema)."""
    records, bad, tallies = [], [], []
    # context as turns unless a test asks otherwise: these tests look at the turns a sample carries
    opts = ReaderOptions(chat=ChatOptions(**{"context": "turns", **chat}))  # type: ignore[arg-type]
    for item in read_input(path, str(path), fmt, opts):
        if isinstance(item, Quarantined):
            bad.append(item)
        elif isinstance(item, MessageTally):
            tallies.append(item)
        else:
            assert schema_errors(item) == [], schema_errors(item)
            records.append(item)
    assert len(tallies) == 1, "a chat export yields exactly one message tally, last"
    assert tallies[0].reconciles(), tallies[0].as_dict()
    return records, bad, tallies[0]


def turns(rec: dict) -> list[tuple[str, str | None, str]]:
    return [(m["role"], m["name"], m["content"]) for m in rec["messages"]]


@pytest.mark.parametrize("name", sorted(FIXTURES))
def test_every_fixture_is_detected_read_and_accounted(name: str) -> None:
    fmt, samples, read_n = FIXTURES[name]
    path = CHATS / name
    assert detect_format(path) == fmt
    records, bad, tally = read(path)
    assert bad == []
    assert len(records) == samples == tally.samples
    assert tally.read == read_n
    for i, rec in enumerate(records):
        assert rec["source"]["format"] == fmt and rec["source"]["index"] == i
        assert rec["messages"][-1]["role"] == "assistant" and rec["messages"][-1]["content"].strip()
        meta = json.loads(rec["meta"])
        assert meta["platform"] == fmt and meta["participants"] and meta["role_rule"] == "every_reply"


def test_chat_formats_are_documented_fixtures(sample_dir: Path) -> None:
    sources = (sample_dir / "SOURCES.md").read_text(encoding="utf-8")
    for name in FIXTURES:
        assert f"chats/{name}" in sources, name
    assert set(FIXTURES[n][0] for n in FIXTURES) <= set(FORMATS)


def test_chat_json_is_not_misread_as_openai(tmp_path: Path) -> None:
    openai_doc = tmp_path / "chat.json"
    openai_doc.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"}]}))
    assert detect_format(openai_doc) == "openai"
    for name in ("discord_beginners.json", "telegram_group/result.json"):
        assert detect_format(CHATS / name) != "openai"
    single = CHATS / "messenger_export/your_facebook_activity/messages/inbox/zoemartin_1234/message_2.json"
    assert detect_format(single) == "messenger"


# --- Slack ------------------------------------------------------------------------------------------


def _zip_dir(src: Path, dst: Path, prefix: str = "") -> Path:
    with zipfile.ZipFile(dst, "w") as zf:
        for p in sorted(src.rglob("*")):
            if p.is_file():
                zf.write(p, prefix + p.relative_to(src).as_posix())
    return dst


def test_slack_zip_reads_like_its_directory(tmp_path: Path) -> None:
    archive = _zip_dir(CHATS / "slack_export", tmp_path / "export.zip", prefix="Acme Slack export/")
    assert detect_format(archive) == "slack"
    from_zip, bad, tally_zip = read(archive)
    from_dir, _, tally_dir = read(CHATS / "slack_export")
    assert bad == []
    assert [r["id"] for r in from_zip] == [r["id"] for r in from_dir]
    assert tally_zip.as_dict() == tally_dir.as_dict()
    assert from_zip[0]["source"]["file"] == f"{archive}!Acme Slack export/help-desk/2023-03-01.json"


def test_slack_threads_mentions_and_drops() -> None:
    records, _, tally = read(CHATS / "slack_export")
    thread = [r for r in records if "ssh-add ~/.ssh" in r["messages"][-1]["content"]]
    assert len(thread) == 1
    t = turns(thread[0])
    # the thread is one session: question, answer, follow-up, answer (the image-only reply is gone)
    assert [(role, name) for role, name, _ in t] == [
        ("user", "Ben Okafor"), ("assistant", "Ana"), ("user", "Ben Okafor"), ("assistant", "Ana")]
    assert t[1][2].startswith("Hi @Ben Okafor, that usually")  # <@U02BEN> resolved to the display name
    assert t[2][2] == "It says <no identities>."  # &lt; &gt; unescaped
    assert "the SSH guide (https://docs.acme.dev/ssh)" in t[3][2]
    meta = json.loads(thread[0]["meta"])
    assert {"Ana", "ana.support", "Ana Lima", "Ben Okafor", "ben"} <= set(meta["participants"])
    # a channel-flow question and its answer are not mixed into the thread
    assert not any("acme logs" in m["content"] for m in thread[0]["messages"])
    assert tally.dropped == {"join_leave": 2, "system": 2, "bot": 1, "deleted": 1, "media_only": 1, "reaction": 2,
                             "unanswered": 1}
    assert tally.chats == 4  # #announcements has no messages at all and is still counted
    merged = [r for r in records if r["messages"][-1]["content"].startswith("ok\nand can")]
    assert merged, "consecutive messages of one sender merge into one turn"


def test_slack_named_assistants() -> None:
    records, _, tally = read(CHATS / "slack_export", assistant=("ana", "U04DEV"), roles="named", role_rule_chosen=True)
    assert tally.role_rule == "named" and not tally.role_rule_default
    assert records and {r["messages"][-1]["name"] for r in records if r["messages"][-1]["name"]} == {"Ana", "Dev"}
    for rec in records:
        for role, name, _ in turns(rec):
            assert (role == "assistant") == (name in ("Ana", "Dev", None) and role == "assistant")
        assert rec["messages"][-2]["role"] == "user"
    answers = [r["messages"][-1]["content"] for r in records]
    assert "Settings → Tokens → New CI token. Give it the `deploy` scope only." in answers  # a DM: no names
    assert not any(a == "Works now, thanks!" for a in answers)
    assert tally.dropped["unanswered"] > 0  # Ben's thanks and the lunch chat answer nothing under this rule


def test_named_sender_not_found_is_counted() -> None:
    records, _, tally = read(CHATS / "whatsapp_ios_family.txt", assistant=("Nobody",), roles="named")
    assert records == [] and tally.chats_without_assistant == 1
    assert tally.dropped["unanswered"] == 5


def test_top_responders_pick_the_most_frequent_answerer() -> None:
    records, _, _ = read(CHATS / "discord_beginners.json", roles="top_responders", top_responders=1)
    assert records and {r["messages"][-1]["name"] for r in records} == {"Kira"}


# --- Discord and Telegram: reply links ---------------------------------------------------------------


def test_discord_explicit_reply_answers_the_replied_message() -> None:
    records, _, _ = read(CHATS / "discord_beginners.json", roles="named", assistant=("kira_dev",))
    toml = next(r for r in records if "toml_edit" in r["messages"][-1]["content"])
    # the reply to Marco's question answers it, a day later, with the borrow-checker talk as context only
    assert toml["messages"][-2]["content"].startswith("unrelated: is there a crate for parsing TOML")
    assert toml["messages"][-1]["content"].startswith("@Marco `toml_edit`")  # <@id> resolved from mentions
    assert all("oh that makes sense" not in m["content"] for m in toml["messages"])


def test_telegram_reply_bridges_the_time_gap() -> None:
    records, _, tally = read(CHATS / "telegram_group/result.json")
    assert tally.sessions == 1  # the update two days later replies to message 4
    _, _, short = read(CHATS / "telegram_group/result.json", session_gap_seconds=60.0)
    assert short.sessions > 1
    first = turns(records[0])
    assert first[-1][2].startswith("Not dead, just hungry") and "Feed it twice a day" in first[-1][2]
    assert tally.dropped == {"join_leave": 3, "system": 1, "media_only": 2, "reaction": 1, "bot": 1}


def test_context_window_and_accounting() -> None:
    msgs = [ChatMessage(str(i), who, who, 1000.0 + 60 * i, f"message {i} from {who}")
            for i, who in enumerate(["a", "b", "a", "b", "a", "b"])]
    chat = Chat("telegram", "c1", "t", "f", msgs)
    opts = ChatOptions(roles="named", assistant=("b",), context_turns=1, context="turns")
    records, tally = build_samples(chat, opts, fmt="telegram", category=None, first_index=0)
    assert [len(r["messages"]) for r in records] == [2, 3, 3]  # context_turns=1 before the instruction
    assert turns(records[2]) == [("assistant", None, "message 3 from b"), ("user", None, "message 4 from a"),
                                 ("assistant", None, "message 5 from b")]
    assert (tally.read, tally.in_sample, tally.context_only) == (6, 6, 0)
    records, tally = build_samples(chat, ChatOptions(roles="named", assistant=("a",), context_turns=0, context="turns"),
                                   fmt="telegram", category=None, first_index=0)
    assert len(records) == 2 and tally.dropped == {"no_instruction": 1, "unanswered": 1}


# --- WhatsApp: locales, platforms, system lines --------------------------------------------------------


def test_whatsapp_line_formats_of_langchain_fixture() -> None:
    from curator.ingest.chats.tree import ExportTree
    from curator.ingest.chats.whatsapp import read_whatsapp

    path = CHATS / "whatsapp_langchain.txt"
    chat = next(c for c in read_whatsapp(ExportTree(path, str(path), ReaderOptions())) if isinstance(c, Chat))
    got = [(m.sender, m.text) for m in chat.messages]
    assert got[0] == ("James", "Hi here") and got[4] == ("User name 2", "Of course!")  # iOS `~ ` stripped
    from curator.ingest.chats.model import iso

    stamps = [iso(m.ts) for m in chat.messages]
    # 1/23/23 proves month-first for the file; 05.05.23 is the 5th of May; year-first 2023/5/4 is May 4
    assert stamps[0] == "2023-05-05T15:48:11Z" and stamps[2] == "2023-01-23T03:19:00Z"
    assert stamps[3] == "2023-01-23T03:22:00Z" and stamps[5] == "2023-05-04T16:13:23Z"
    assert stamps[6] == "2022-07-19T23:32:00Z"  # 11:32 PM


@pytest.mark.parametrize(("lines", "expected"), [
    (["13/01/2024, 21:05 - A: x", "14/01/2024, 09:00 - B: y"], "2024-01-13T21:05:00Z"),  # Android, day first
    (["1/13/24, 9:05\u202fPM - A: x", "1/14/24, 9:00\u202fAM - B: y"], "2024-01-13T21:05:00Z"),  # US, U+202F
    (["\u200e[13.01.24, 21:05:00] A: x", "[14.01.24, 09:00:00] B: y"], "2024-01-13T21:05:00Z"),  # iOS, LRM
    (["13.1.2024 klo 21.05.00 - A: x", "14.1.2024 klo 9.00.00 - B: y"], "2024-01-13T21:05:00Z"),  # Finnish
    # all ambiguous: the order under which time runs forward wins (3 Feb..4 Feb, not 2 Mar..2 Apr)
    (["03/02/2024, 10:00 - A: x", "04/02/2024, 10:00 - B: y", "04/02/2024, 11:00 - A: z"], "2024-02-03T10:00:00Z"),
])
def test_whatsapp_locales(tmp_path: Path, lines: list[str], expected: str) -> None:
    from curator.ingest.chats.model import iso
    from curator.ingest.chats.tree import ExportTree
    from curator.ingest.chats.whatsapp import read_whatsapp

    path = tmp_path / "WhatsApp Chat with A.txt"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    assert detect_format(path) == "whatsapp"
    chat = next(c for c in read_whatsapp(ExportTree(path, str(path), ReaderOptions())) if isinstance(c, Chat))
    assert iso(chat.messages[0].ts) == expected and chat.title == "A"
    assert [m.text for m in chat.messages][:2] == ["x", "y"]


def test_whatsapp_ios_system_media_deleted_and_multiline() -> None:
    records, _, tally = read(CHATS / "whatsapp_ios_family.txt")
    assert tally.dropped == {"system": 2, "join_leave": 2, "media_only": 2, "deleted": 1, "reaction": 1}
    router = turns(records[0])
    assert router[1][2] == ("Unplug it for 30 seconds, then plug it back in.\n"
                            "If the light stays red, hold the reset button on the back for 10 seconds with a pen.")
    assert turns(records[1])[-1][2] == "The light is green now, thank you!!"  # edited marker stripped
    assert turns(records[2])[-1][1] == "Ana"  # names kept: three people in this group


def test_whatsapp_zip_export(tmp_path: Path) -> None:
    archive = tmp_path / "WhatsApp Chat - Family.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.write(CHATS / "whatsapp_ios_family.txt", "_chat.txt")
        zf.writestr("00000012-PHOTO-2024-02-14-21-40-00.jpg", b"\xff\xd8\xff\xe0 not really a jpeg")
    assert detect_format(archive) == "whatsapp"
    records, bad, _ = read(archive)
    assert bad == [] and len(records) == 3
    assert json.loads(records[0]["meta"])["chat"] == "Family"


# --- Messenger ---------------------------------------------------------------------------------------


def test_messenger_mojibake_reactions_and_split_files() -> None:
    assert fix_mojibake("Caf\u00c3\u00a9 M\u00c3\u00bcller") == "Café Müller"
    assert fix_mojibake("already fine: é") == "already fine: é"
    records, _, tally = read(CHATS / "messenger_export")
    assert tally.chats == 1  # message_1.json and message_2.json are one conversation
    answers = [r["messages"][-1]["content"] for r in records]
    assert "Yes! I'll send you the recipe tonight. It's my grand-mère's crème brûlée." in answers
    assert "Perfect, 7pm at the café then. À bientôt!" in answers
    assert tally.dropped == {"reaction": 1, "deleted": 1, "media_only": 1, "system": 1}
    assert {"José Álvarez", "Zoë Martin"} <= set(json.loads(records[0]["meta"])["participants"])


# --- malformed and empty exports ----------------------------------------------------------------------


def test_malformed_slack_day_file_is_quarantined_with_file_and_position(tmp_path: Path) -> None:
    export = tmp_path / "slack"
    shutil.copytree(CHATS / "slack_export", export)
    day = export / "help-desk" / "2023-03-02.json"
    day.write_bytes(day.read_bytes()[:900])  # truncated mid-array
    (export / "random" / "2023-03-01.json").write_text('[{"type": "message", "user": "U02BEN", "text": "no ts"}]')
    records, bad, tally = read(export)
    files = sorted(q.file for q in bad)
    assert files == [f"{export}/help-desk/2023-03-02.json", f"{export}/random/2023-03-01.json"]
    truncated = next(q for q in bad if "help-desk" in q.file)
    assert "truncated" in truncated.reason and truncated.index is not None
    no_ts = next(q for q in bad if "random" in q.file)
    assert no_ts.index == 0 and "'ts'" in no_ts.reason
    assert tally.dropped["malformed"] == 2 and records  # the rest of the export still yields samples


def test_malformed_discord_keeps_messages_before_the_damage(tmp_path: Path) -> None:
    raw = (CHATS / "discord_beginners.json").read_text(encoding="utf-8")
    cut = raw.index('"id": "1007"')
    broken = tmp_path / "discord.json"
    broken.write_text(raw[:cut], encoding="utf-8")
    assert detect_format(broken) == "discord"
    records, bad, tally = read(broken)
    assert len(bad) == 1 and bad[0].file == str(broken) and bad[0].index == 6 and "truncated" in bad[0].reason
    assert records and tally.read == 7 and tally.dropped["malformed"] == 1


def test_malformed_telegram_message_and_messenger_timestamp(tmp_path: Path) -> None:
    doc = json.loads((CHATS / "telegram_group/result.json").read_text(encoding="utf-8"))
    doc["messages"][3].pop("date")
    doc["messages"][3].pop("date_unixtime")
    doc["messages"][5]["text"] = 42
    path = tmp_path / "result.json"
    path.write_text(json.dumps(doc), encoding="utf-8")
    _, bad, tally = read(path)
    assert [q.index for q in bad] == [3, 5] and all(q.file == str(path) for q in bad)
    assert tally.dropped["malformed"] == 2
    msg = tmp_path / "message_1.json"
    msg.write_text(json.dumps({"participants": [{"name": "A"}], "messages": [
        {"sender_name": "A", "timestamp_ms": "yesterday", "content": "hi"},
        {"sender_name": "B", "timestamp_ms": 1700000000000, "content": "hello"}]}), encoding="utf-8")
    _, bad, tally = read(msg)
    assert len(bad) == 1 and bad[0].index == 0 and "timestamp_ms" in bad[0].reason and tally.read == 2


def test_malformed_whatsapp_lines_are_quarantined_with_line_numbers(tmp_path: Path) -> None:
    path = tmp_path / "chat.txt"
    path.write_bytes(
        b"12/01/2024, 10:00 - Ana: hello\n"
        b"12/01/2024, 10:01 - Bo: caf\xe9 latin-1 byte\n"
        b"31/02/2024, 10:02 - Ana: the 31st of February\n"
        b"12/01/2024, 10:03 - Bo: fine again\n"
    )
    records, bad, tally = read(path)
    assert [(q.line, q.index) for q in bad] == [(2, 1), (3, 2)]
    assert "invalid UTF-8 at byte offset" in bad[0].reason and "not a valid date" in bad[1].reason
    assert tally.read == 4 and tally.dropped["malformed"] == 2 and len(records) == 1


def test_empty_exports(tmp_path: Path) -> None:
    export = tmp_path / "empty_slack"
    export.mkdir()
    (export / "users.json").write_text("[]")
    (export / "channels.json").write_text('[{"id": "C1", "name": "general", "members": []}]')
    (export / "general").mkdir()
    (export / "general" / "2024-01-01.json").write_text("[]")
    records, bad, tally = read(export)
    assert (records, bad, tally.read, tally.chats) == ([], [], 0, 1)
    only_system = tmp_path / "system.txt"
    only_system.write_text("06/03/2017, 00:45 - Messages to this group are now secured with end-to-end encryption.\n")
    records, _, tally = read(only_system)
    assert records == [] and tally.dropped == {"system": 1}
    with pytest.raises(UnreadableInput, match="looks like a whatsapp export"):
        list(read_input(only_system, "system.txt", "slack", ReaderOptions()))


def test_reading_is_deterministic() -> None:
    a = read(CHATS / "slack_export")
    b = read(CHATS / "slack_export")
    assert a[0] == b[0] and a[2].as_dict() == b[2].as_dict()


# --- config and CLI -----------------------------------------------------------------------------------


def test_config_as_alias_and_chat_options() -> None:
    from curator.ingest.inputs import chat_options

    cfg = CurateConfig.model_validate({
        "inputs": [{"path": "x.zip", "as": ["Ana"]}, {"path": "y.txt"}, {"path": "z.json", "roles": "top_responders"}],
        "chats": {"session_gap_minutes": 30, "context_turns": 2},
    })
    assert cfg.inputs[0].assistant == ["Ana"]
    a, b, c = (chat_options(cfg, i) for i in range(3))
    assert (a.roles, a.assistant, a.role_rule_chosen, a.session_gap_seconds) == ("named", ("Ana",), True, 1800.0)
    assert (b.roles, b.role_rule_chosen, b.context_turns) == ("every_reply", False, 2)
    assert (c.roles, c.role_rule_chosen) == ("top_responders", True)
    assert InputSpec(path="p").assistant is None
    # the config as a worker receives it (JSON, every field set) still says the default was applied
    shipped = CurateConfig.model_validate_json(cfg.model_dump_json())
    assert chat_options(shipped, 1) == b
    chosen = CurateConfig.model_validate({"inputs": [{"path": "y.txt"}], "chats": {"roles": "every_reply"}})
    assert chat_options(chosen, 0).role_rule_chosen


def test_slack_directory_is_one_input() -> None:
    from curator.ingest.inputs import expand_inputs

    assert is_chat_export_dir(CHATS / "slack_export")
    assert expand_inputs([str(CHATS / "slack_export")]) == [str(CHATS / "slack_export")]
    assert not is_chat_export_dir(CHATS)


def test_curate_and_pack_a_slack_zip_and_a_whatsapp_chat_end_to_end(
    tmp_path: Path, tiny_tokenizer_dir: Path, capsys: pytest.CaptureFixture
) -> None:
    """The README example: `curator curate export.zip --out DIR` with the default pipeline, then `curator pack`."""
    import polars as pl

    from curator.cli import main

    archive = _zip_dir(CHATS / "slack_export", tmp_path / "export.zip")
    chat = CHATS / "whatsapp_ios_family.txt"
    out = tmp_path / "curated"
    assert main(["curate", str(archive), str(chat), "--out", str(out), "--workers", "1"]) == 0
    report = json.loads((out / "report.json").read_text())
    acct = report["accounting"]
    assert acct["read"] == 11 + 3 == acct["kept"] + acct["dropped"] + acct["quarantined"]
    messages = acct["messages"]
    assert messages["read"] == 27 + 13 == messages["in_sample"] + messages["context_only"] + sum(
        messages["dropped"].values())
    assert messages["by_input"][str(archive)]["role_rule_default"] is True
    assert "Chat messages" in (out / "report.html").read_text()
    printed = " ".join(capsys.readouterr().err.split())
    assert "chat messages" in printed and "No assistant was named, so the default role rule applied" in printed
    kept = pl.read_parquet(out / "kept" / "*.parquet")
    texts = " ".join(m["content"] for msgs in kept["messages"].to_list() for m in msgs)
    assert "Ben Okafor" not in texts and "Tomás Costa" not in texts  # the PII step scrubbed mentions and names
    shards = tmp_path / "shards"
    assert main(["pack", str(out), "--out", str(shards), "--tokenizer", str(tiny_tokenizer_dir),
                 "--seq-len", "512"]) == 0
    manifest = json.loads((shards / "manifest.json").read_text())
    assert manifest["records"]["count"] == kept.height
    # same input + config: byte-identical kept records
    again = tmp_path / "again"
    assert main(["curate", str(archive), str(chat), "--out", str(again), "--workers", "1"]) == 0
    for part in sorted((out / "kept").glob("*.parquet")):
        assert part.read_bytes() == (again / "kept" / part.name).read_bytes()


def test_samples_of_one_session_never_straddle_train_and_eval() -> None:
    import polars as pl

    from curator.config import SplitConfig
    from curator.format.split import assign_splits

    records, _, _ = read(CHATS / "slack_export")
    records += read(CHATS / "telegram_group/result.json")[0] + read(CHATS / "discord_beginners.json")[0]
    frame = pl.DataFrame({
        "id": [r["id"] for r in records],
        "category": ["chat"] * len(records),
        "session": [json.loads(r["meta"])["session"] for r in records],
        "cluster_id": [None] * len(records),
    }, schema_overrides={"cluster_id": pl.String})
    for seed in range(5):
        out = assign_splits(frame, SplitConfig(eval_fraction=0.3), seed)
        sides = out.group_by("session").agg(pl.col("split").n_unique())
        assert sides["split"].max() == 1
        assert set(out["split"]) == {"train", "eval"}


def test_telegram_whole_account_export_and_crlf_whatsapp(tmp_path: Path) -> None:
    single = json.loads((CHATS / "telegram_group/result.json").read_text(encoding="utf-8"))
    full = {"about": "Here is the data you requested.", "personal_information": {"user_id": 1, "first_name": "X"},
            "chats": {"about": "All chats.", "list": [single, {"name": "Saved Messages", "type": "saved_messages",
                                                               "id": 7, "messages": []}]},
            "left_chats": {"about": "Left chats.", "list": []}}
    path = tmp_path / "result.json"
    path.write_text(json.dumps(full, ensure_ascii=False), encoding="utf-8")
    assert detect_format(path) == "telegram"
    records, bad, tally = read(path)
    assert bad == [] and tally.chats == 2 and len(records) == 5 and tally.read == 14
    crlf = tmp_path / "chat.txt"
    crlf.write_bytes(b"12/01/2024, 10:00 - Ana: hello\r\nsecond line\r\n12/01/2024, 10:01 - Bo: hi Ana\r\n")
    records, _, _ = read(crlf)
    assert turns(records[0]) == [("user", None, "hello\nsecond line"), ("assistant", None, "hi Ana")]


def test_context_as_field_gives_pairs_whose_only_target_is_the_answer() -> None:
    records, _, tally = read(CHATS / "slack_export", assistant=("Ana", "Dev"), roles="named", context="field")
    turns_form, _, tally_turns = read(CHATS / "slack_export", assistant=("Ana", "Dev"), roles="named")
    assert len(records) == len(turns_form) and tally.as_dict() == tally_turns.as_dict()
    for rec in records:
        assert [m["role"] for m in rec["messages"]] == ["user", "assistant"]
    follow_up = next(r for r in records if r["messages"][-1]["content"].startswith("Then add it with"))
    assert follow_up["messages"][0]["content"] == "It says <no identities>."
    assert follow_up["context"].splitlines()[0].startswith("Ben Okafor: Hi! `acme deploy` fails")
    assert follow_up["context"].splitlines()[1].startswith("Ana: Hi @Ben Okafor")
    first = next(r for r in records if r["messages"][-1]["content"].startswith("Hi @Ben Okafor"))
    assert first["context"] is None  # nothing before the question
