"""PII scrubbing: no seeded value survives anywhere, replacements are consistent and deterministic,
JSON stays valid, chat false positives are kept, bad input neither crashes nor leaks, no network."""

from __future__ import annotations

import json
import logging
import os
import random
import stat
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

from curator.config import PiiConfig
from curator.record import make_record, to_table
from curator.steps.base import DROP_REASON, decide
from curator.steps.pii import (
    FAILED_MARKER,
    PII_COUNT,
    PII_ENTITIES,
    PII_ERROR,
    PII_SCAN,
    PiiScrub,
    build_analyzer,
    pii_summary,
)

ROOT = Path(__file__).resolve().parent.parent


def luhn_complete(prefix: str) -> str:
    """`prefix` plus the check digit that makes it pass the Luhn test."""
    digits = [int(d) for d in prefix]
    total = 0
    for i, d in enumerate(reversed(digits)):
        if i % 2 == 0:
            d *= 2
            d = d - 9 if d > 9 else d
        total += d
    return prefix + str((10 - total % 10) % 10)


CARD = luhn_complete("453914880343646")
SEEDED = {
    "name": "Margaret Thornbury",
    "email": "m.thornbury@northwind-mail.com",
    "phone": "(415) 555-0198",
    "card": f"{CARD[:4]} {CARD[4:8]} {CARD[8:12]} {CARD[12:]}",
    "iban": "GB82 WEST 1234 5698 7654 32",
    "address": "742 Evergreen Terrace, Springfield, OR 97403",
    "openai_key": "sk-proj-Qx7TzP2mVb9LwK4nRc8HsD3fYj6GtA1e",
    "aws_key": "AKIAJ7Q2ZL5WXR3TNP4M",
    "ipv6": "2001:db8:85a3:8d3:1319:8a2e:370:7348",
}
# forms a value may take after being split or re-serialised, all of which must be gone too
FORMS = [
    *SEEDED.values(),
    CARD,
    SEEDED["iban"].replace(" ", ""),
    "northwind-mail.com",
    "Thornbury",
    "Evergreen Terrace",
]


@pytest.fixture(scope="module")
def analyzer():  # type: ignore[no-untyped-def]
    """One presidio analyzer for the module (loading spaCy is the slow part)."""
    return build_analyzer(PiiConfig())


@pytest.fixture(scope="module")
def step(analyzer) -> PiiScrub:  # type: ignore[no-untyped-def]
    return PiiScrub(PiiConfig(), seed=0, analyzer=analyzer)


def frame(records: list[dict]) -> pl.DataFrame:
    """Records as the engine hands them to a step: canonical columns plus `row`."""
    df = pl.from_arrow(to_table(records))
    assert isinstance(df, pl.DataFrame)
    return df.with_row_index("row").with_columns(pl.col("row").cast(pl.Int64))


def glaive_records(path: Path, n: int) -> list[dict]:
    """The first `n` real tool-call conversations, with the seeded PII planted in every kind of field."""
    roles = {"human": "user", "gpt": "assistant", "observation": "tool"}
    out = []
    for conv in json.loads(path.read_text(encoding="utf-8"))[:n]:
        msgs: list[dict] = [{"role": "system", "content": f"You help {SEEDED['name']} (card {SEEDED['card']})."}]
        for turn in conv["conversations"]:
            if turn["from"] == "function_call":
                call = json.loads(turn["value"])
                args = {
                    **call.get("arguments", {}),
                    "contact": {"email": SEEDED["email"], "ip": SEEDED["ipv6"]},
                    "note": f"ship to {SEEDED['address']}",
                }
                msgs.append(
                    {
                        "role": "assistant",
                        "content": "",
                        "tool_calls": [{"id": None, "name": call["name"], "arguments": json.dumps(args)}],
                    }
                )
            else:
                msgs.append({"role": roles[turn["from"]], "content": turn["value"]})
        first_user = next(m for m in msgs if m["role"] == "user")
        first_user["content"] += f"\nI'm {SEEDED['name']}, reach me at {SEEDED['email']} or {SEEDED['phone']}."
        msgs.append({"role": "tool", "content": json.dumps({"iban": SEEDED["iban"], "key": SEEDED["openai_key"]})})
        msgs.append(
            {"role": "user", "content": f"also my AWS key AKIA is {SEEDED['aws_key']}, thanks {SEEDED['name']}"}
        )
        out.append(
            make_record(
                msgs,
                source={"file": path.name, "index": len(out), "format": "sharegpt"},
                context=f"Customer phone: {SEEDED['phone']}",
                tools=conv.get("tools"),
                meta={"title": f"Chat with {SEEDED['name']}"},
            )
        )
    return out


def pirate_records(path: Path) -> list[dict]:
    """sample_data's OpenAI fine-tuning chats with an address and a name split across lines."""
    out = []
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines()):
        msgs = json.loads(line)["messages"]
        msgs[-1]["content"] += (
            f"\n\nSend the treasure to:\n{SEEDED['name']}\n742 Evergreen Terrace\nSpringfield, OR 97403"
        )
        out.append(make_record(msgs, source={"file": path.name, "index": i, "format": "openai"}))
    return out


@pytest.mark.shared
def test_seeded_pii_never_reaches_outputs_logs_or_report(
    step: PiiScrub, shared_data: Path, sample_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    records = glaive_records(shared_data / "conversations/llamafactory_glaive_toolcall_en_demo_sharegpt.json", 12)
    records += pirate_records(sample_dir / "pirate_training_set.jsonl")
    batch = frame(records)
    with caplog.at_level(logging.DEBUG):
        out = step(batch)
        summary = pii_summary(out)
    out.write_parquet(tmp_path / "kept.parquet")
    out.write_ndjson(tmp_path / "kept.jsonl")
    (tmp_path / "report.json").write_text(json.dumps(summary))

    assert out.height == batch.height and out["id"].to_list() == batch["id"].to_list()
    texts = [(tmp_path / "kept.jsonl").read_text(), (tmp_path / "report.json").read_text(), caplog.text]
    texts.append(pl.read_parquet(tmp_path / "kept.parquet").write_ndjson())
    for value in FORMS:
        for blob in texts:
            assert value.lower() not in blob.lower(), f"seeded value leaked: {value[:4]}..."
    assert out[PII_ERROR].null_count() == out.height
    # every tool-call argument is still valid JSON, with placeholders where the PII was
    for msgs in out["messages"].to_list():
        for m in msgs:
            for call in m["tool_calls"] or []:
                args = json.loads(call["arguments"])
                assert args["contact"]["email"] == "<EMAIL_1>"
    assert summary["by_type"]["EMAIL_ADDRESS"] >= 24 and summary["by_type"]["SECRET"] >= 24
    assert {"messages[].content", "context", "messages[].tool_calls[].arguments", "meta"} <= set(summary["by_field"])


def test_audit_offsets_point_at_the_original_values(step: PiiScrub) -> None:
    text = f"Hi, I'm {SEEDED['name']}; mail {SEEDED['email']} or call {SEEDED['phone']}."
    rec = make_record(
        [{"role": "user", "content": text}, {"role": "assistant", "content": "Noted."}],
        source={"file": "t", "index": 0, "format": "test"},
    )
    out = step(frame([rec]))
    found = {(e["type"], text[e["start"] : e["end"]]) for e in out[PII_ENTITIES][0].to_list()}
    assert ("EMAIL_ADDRESS", SEEDED["email"]) in found
    assert ("PERSON", SEEDED["name"]) in found
    assert ("PHONE_NUMBER", SEEDED["phone"]) in found
    assert out[PII_COUNT][0] == len(found)
    assert all(e["field"] == "messages[0].content" for e in out[PII_ENTITIES][0].to_list())


def test_same_value_same_placeholder_within_a_record(step: PiiScrub) -> None:
    msgs = [
        {"role": "user", "content": "Please email Margaret Thornbury at m.thornbury@northwind-mail.com today."},
        {"role": "assistant", "content": "I will write to margaret  thornbury (m.thornbury@northwind-mail.com)."},
        {"role": "assistant", "content": "Thornbury said yes."},
        {"role": "user", "content": "And cc Jonathan Whitaker at j.whitaker@northwind-mail.com."},
    ]
    rec = make_record(msgs, source={"file": "t", "index": 0, "format": "test"})
    contents = [m["content"] for m in step(frame([rec]))["messages"][0].to_list()]
    assert contents[0] == "Please email <PERSON_1> at <EMAIL_1> today."
    assert contents[1] == "I will write to <PERSON_1> (<EMAIL_1>)."  # found again although NER missed it
    assert contents[2] == "<PERSON_1> said yes."  # her surname alone is the same person
    assert "<PERSON_2>" in contents[3] and "<EMAIL_2>" in contents[3]


def test_surrogates_are_realistic_consistent_and_byte_identical_across_runs(analyzer) -> None:  # type: ignore[no-untyped-def]
    msgs = [
        {"role": "user", "content": "My colleague Margaret Thornbury (m.thornbury@northwind-mail.com) is out."},
        {
            "role": "assistant",
            "content": "I'll tell Margaret Thornbury; should I write to m.thornbury@northwind-mail.com?",
        },
    ]
    batch = frame([make_record(msgs, source={"file": "t", "index": 0, "format": "test"})])
    cfg = PiiConfig(mode="surrogate")
    first = PiiScrub(cfg, seed=3, analyzer=analyzer)(batch)
    second = PiiScrub(cfg, seed=3, analyzer=analyzer)(batch)
    other_seed = PiiScrub(cfg, seed=4, analyzer=analyzer)(batch)
    assert first.write_ndjson() == second.write_ndjson()
    assert first.write_ndjson() != other_seed.write_ndjson()
    a, b = (m["content"] for m in first["messages"][0].to_list())
    assert "Thornbury" not in a + b and "northwind-mail" not in a + b and "<" not in a + b
    fake_email = next(w.strip("()?;") for w in a.split() if "@" in w)
    assert fake_email in b  # the same value got the same surrogate in both turns


def test_chat_false_positives_are_kept(step: PiiScrub) -> None:
    text = (
        "Upgrade numpy to 1.26.4 (or v2.0.1rc1) since 2023; the job runs at 10:30 on 2024-05-01. "
        "Call get_user_name() or userName, then self.session.close(); see app.py and requests.get."
    )
    assert step.scrub_text(text) == text


@pytest.mark.parametrize(
    ("text", "gone"),
    [
        ("Контакт: Иван, почта ivan.petrov@example.ru, 日本語テキスト 電話", ["ivan.petrov@example.ru"]),
        ("reset link: https://acme.example.com/reset?email=jane.doe@corp.io&uid=1", ["jane.doe@corp.io"]),
        ("Ship to:\n742 Evergreen Terrace\nApt. 12\nSpringfield, OR 97403\nthanks", ["Evergreen", "97403", "Apt. 12"]),
        (
            '{"query": "{\\"email\\": \\"jane.doe@corp.io\\", \\"ip\\": \\"10.1.2.3\\"}"}',
            ["jane.doe@corp.io", "10.1.2.3"],
        ),
        ("key\ud800 broken surrogate, mail jane.doe@corp.io", ["jane.doe@corp.io"]),
        (
            "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA7bq\nq9f+Kx0=\n-----END RSA PRIVATE KEY-----",
            ["MIIEowIBAAKCAQEA7bq"],
        ),
    ],
    ids=["mixed-scripts", "pii-in-url", "split-across-lines", "json-in-json", "lone-surrogate", "private-key"],
)
def test_bad_input_is_scrubbed_without_crash(step: PiiScrub, text: str, gone: list[str]) -> None:
    out = step.scrub_text(text)
    for value in gone:
        assert value not in out


def test_binary_junk_and_json_in_tool_arguments_keep_records_valid(step: PiiScrub) -> None:
    rng = random.Random(0)
    junk = bytes(rng.getrandbits(8) for _ in range(20_000)).decode("latin-1")
    junk = junk[:9000] + " mail jane.doe@corp.io " + junk[9000:]
    args = json.dumps({"filter": json.dumps({"owner": "jane.doe@corp.io"}), "limit": 4155550198})
    msgs = [
        {"role": "user", "content": junk},
        {"role": "assistant", "content": "", "tool_calls": [{"id": "c1", "name": "search", "arguments": args}]},
    ]
    out = step(frame([make_record(msgs, source={"file": "t", "index": 0, "format": "test"})]))
    dump = out.write_ndjson()
    assert "jane.doe@corp.io" not in dump and "4155550198" not in dump
    new_args = json.loads(out["messages"][0][1]["tool_calls"][0]["arguments"])
    assert new_args["limit"] in ("<PHONE_1>", "<ID_1>") and "<EMAIL_1>" in new_args["filter"]
    assert out[PII_ERROR][0] is None


def test_entity_on_a_chunk_boundary_is_found_with_original_offsets(analyzer) -> None:  # type: ignore[no-untyped-def]
    step = PiiScrub(PiiConfig(chunk_chars=1000, chunk_overlap=200), analyzer=analyzer)
    filler = "The weather was fine and the meeting went on. "
    head = (filler * 22)[:985]
    text = head[: head.rfind(" ") + 1].ljust(985) + "jane.doe@corp.io " + filler * 20 + " and finally bob.smith@corp.io"
    spans = step.analyze_texts([text])[0]
    emails = sorted(text[s.start : s.end] for s in spans if s.type == "EMAIL_ADDRESS")
    assert emails == ["bob.smith@corp.io", "jane.doe@corp.io"]
    assert "corp.io" not in step.scrub_text(text)


def test_oversized_text_is_dropped_with_reason_not_kept_raw(step: PiiScrub) -> None:
    huge = ("lorem ipsum dolor " * 300_000)[:5_000_000] + f" {SEEDED['email']}"
    rec = make_record(
        [{"role": "user", "content": huge}, {"role": "assistant", "content": "ok"}],
        source={"file": "t", "index": 0, "format": "test"},
    )
    out = decide(step(frame([rec])), step.rules())
    assert out[DROP_REASON][0] == "pii_error"
    assert "pii.max_text_chars" in out[PII_ERROR][0]
    assert out["messages"][0][0]["content"] == FAILED_MARKER
    assert SEEDED["email"] not in out.write_ndjson()


def test_mapping_file_only_when_asked_and_owner_only(analyzer, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    rec = make_record(
        [{"role": "user", "content": f"I am {SEEDED['name']}, {SEEDED['email']}"}],
        source={"file": "t", "index": 0, "format": "test"},
    )
    os.chdir(tmp_path)
    PiiScrub(PiiConfig(), analyzer=analyzer)(frame([rec]))
    assert list(tmp_path.iterdir()) == []
    path = tmp_path / "mapping.jsonl"
    PiiScrub(PiiConfig(mapping_file=str(path)), analyzer=analyzer)(frame([rec]))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert {(r["replacement"], r["value"]) for r in rows} >= {("<EMAIL_1>", SEEDED["email"])}


def test_summary_counts_by_type_and_field(step: PiiScrub) -> None:
    recs = [
        make_record(
            [{"role": "user", "content": f"mail {SEEDED['email']} and {SEEDED['openai_key']}"}],
            source={"file": "t", "index": 0, "format": "test"},
            context=f"IP {SEEDED['ipv6']}",
        ),
        make_record(
            [{"role": "user", "content": "What is 2 + 2?"}], source={"file": "t", "index": 1, "format": "test"}
        ),
    ]
    summary = pii_summary(step(frame(recs)))
    assert summary["records"] == 2 and summary["records_with_pii"] == 1 and summary["entities"] == 3
    assert summary["by_type"] == {"EMAIL_ADDRESS": 1, "IP_ADDRESS": 1, "SECRET": 1}
    assert summary["by_field"] == {"context": 1, "messages[].content": 2}


@pytest.mark.slow
def test_no_network_attempt_while_building_and_scrubbing() -> None:
    """In a fresh process with sockets that raise, the step loads and scrubs emails and URLs."""
    code = (
        "import socket\n"
        "def refuse(*a, **k):\n"
        "    raise RuntimeError('network attempted')\n"
        "socket.socket.connect = refuse\n"
        "socket.create_connection = refuse\n"
        "socket.getaddrinfo = refuse\n"
        "from curator.steps.pii import PiiScrub\n"
        "print(PiiScrub().scrub_text('mail jane.doe@corp.co.uk, see https://www.example.org/x'))\n"
    )
    env = {**os.environ, "TLDEXTRACT_CACHE": "/nonexistent-cache-dir"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "mail <EMAIL_1>, see <URL_1>"
    assert "network attempted" not in proc.stderr


def record(msgs: list[dict], **kw) -> dict:  # type: ignore[no-untyped-def]
    """A record from turns, as a reader makes it."""
    return make_record(msgs, source={"file": "t", "index": 0, "format": "test"}, **kw)


def test_participants_and_speaker_names_are_known_pii_everywhere(step: PiiScrub) -> None:
    """A messenger export's record (issue 14's shape): participants in meta, speakers in `name`."""
    msgs = [
        {"role": "user", "name": "Ola Nordmann", "content": "ok @kjell_92, Ola here. bo will bring the cake"},
        {"role": "user", "name": "kjell_92", "content": "thanks Ola! see you at 5"},
        {"role": "user", "name": "Bo", "content": "Bo agrees. Ask Nordmann about the room."},
        {"role": "assistant", "content": "Sounds like a plan, Ola, Bo and kjell_92."},
    ]
    meta = {"participants": ["Ola Nordmann", "kjell_92", "Bo"], "channel_id": "C024BE91L", "platform": "slack"}
    out = step(frame([record(msgs, meta=meta)]))
    dump = out.write_ndjson()
    for raw in ("Ola", "Nordmann", "kjell_92", "Bo "):
        assert raw not in dump, raw
    new_meta = json.loads(out["meta"][0])
    assert new_meta["channel_id"] == "C024BE91L" and new_meta["platform"] == "slack"
    assert all(p.startswith("<PERSON_") for p in new_meta["participants"])
    names = [m["name"] for m in out["messages"][0].to_list()[:3]]
    assert len(set(names)) == 3 and all(n.startswith("<PERSON_") for n in names)
    contents = [m["content"] for m in out["messages"][0].to_list()]
    assert contents[2].startswith(names[2])  # "Bo" (2 letters) replaced by the same placeholder as its name
    assert "bo will bring" in contents[0]  # short names match case-sensitively: "bo" in lower case is no name


def test_user_name_in_a_system_prompt_is_replaced_in_every_turn(step: PiiScrub) -> None:
    msgs = [
        {"role": "system", "content": "The user's name is Wiebke Sørensen. Be brief."},
        {"role": "user", "content": "hi, it's wiebke again"},
        {"role": "assistant", "content": "Welcome back, Wiebke. How can Sørensen family help?"},
    ]
    dump = step(frame([record(msgs)])).write_ndjson().lower()
    assert "wiebke" not in dump and "sørensen" not in dump


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("my maestro card 6304 0000 0000 0000", "6304 0000 0000 0000"),  # replaced below by a Luhn-valid one
        ("Visa 19: {visa19}", "{visa19}"),
        ("mc {mc2}", "{mc2}"),
        ("jcb {jcb15}", "{jcb15}"),
        ("call me at 9472 7916 tonight", "9472 7916"),
        ("my number is 467 3395", "467 3395"),
        ("tel 60-56-85-91", "60-56-85-91"),
        ("office (37) 788-063", "(37) 788-063"),
        ("ring +1-903-140-4508x769", "+1-903-140-4508x769"),
        ("reach me on +41 (0)96 123 45 67", "+41 (0)96 123 45 67"),
        ("dial 415.867.5309 after 6", "415.867.5309"),
        ("log in with password Qr7!dke#39 and check", "Qr7!dke#39"),
        ("the password? mine is 9xR#tq2mW", "9xR#tq2mW"),
        ("my passport number X12345678 expired", "X12345678"),
        ("Steuer-ID: 12 345 678 901", "12 345 678 901"),
        ("account number 000123456789 at the bank", "000123456789"),
        ("driver's license D123-4567-8901", "D123-4567-8901"),
    ],
)
def test_structured_values_people_write_are_found(step: PiiScrub, text: str, value: str) -> None:
    cards = {
        "visa19": luhn_complete("453201511283036"[:14] + "0000"),
        "mc2": luhn_complete("222100000000001"),
        "jcb15": luhn_complete("21310000000001"),
    }
    if "maestro" in text:
        value = luhn_complete("63040000000")
        text = f"my maestro card {value}"
    text, value = text.format(**cards), value.format(**cards)
    assert value not in step.scrub_text(text)


def test_number_look_alikes_are_kept(step: PiiScrub) -> None:
    text = (
        "Upgrade to 1.26.4 (released 2024-05-01 at 10:30), build 20240501, "
        "commit 9fceb02d0ae598e95dc970b74767f19372d61af8, "
        "order #48213 of 3 items for $1,299.00, timestamp 1700000000000, port 8080, page 12 of 340."
    )
    assert step.scrub_text(text) == text


@pytest.mark.parametrize(
    ("text", "gone"),
    [
        (
            "Ship to 742 Evergreen Terrace???Springfield, OR 97403???United States, thanks",
            ["Evergreen", "97403", "United"],
        ),
        ("send it to 123 main street, springfield please", ["main street"]),
        ("Kossuth Lajos utca 12, 1053 Budapest", ["Kossuth", "1053"]),
        ("A Hősök tere 5 alatt lakom.", ["Hősök tere 5"]),
        ("abito in Via dei Mille 12, Roma", ["Mille 12"]),
        ("481 Hill Loop, Apt 2 and 9 Crystal Mall", ["Hill Loop", "Crystal Mall"]),
        ("PSC 1234, Box 5678, APO AA 12345", ["PSC 1234", "12345"]),
    ],
)
def test_address_forms_and_tails_are_removed(step: PiiScrub, text: str, gone: list[str]) -> None:
    out = step.scrub_text(text, mode="patterns")
    for value in gone:
        assert value not in out


def test_address_span_stops_at_the_sentence_end(step: PiiScrub) -> None:
    out = step.scrub_text("I live at 12 Main Street, Springfield. My doctor is nice.")
    assert out.endswith(". My doctor is nice.")


def test_ordinary_words_and_codes_are_not_rewritten(step: PiiScrub) -> None:
    for text in (
        "Summarize the main ideas of the article.",
        "Cook the chicken for 20 minutes, then add the rice.",
        "Use MySQL 7 or Postgres. -- CLIENT TODO: fix the colour #FFFF00.",
    ):
        assert step.scrub_text(text) == text, text


def test_code_gets_the_code_policy(step: PiiScrub) -> None:
    code = (
        "# Manually split the data\nimport pandas as pd\nowner = 'jane.doe@corp.io'\n"
        "Key = 'sk-proj-Qx7TzP2mVb9LwK4nRc8HsD3fYj6GtA1e'\n"
    )
    msgs = [
        {"role": "user", "content": f"Why does this fail?\n```python\n{code}```\nThanks, Margaret Thornbury"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [{"id": "c", "name": "python", "arguments": json.dumps({"code": code})}],
        },
    ]
    out = step(frame([record(msgs)]))
    turns = out["messages"][0].to_list()
    args = json.loads(turns[1]["tool_calls"][0]["arguments"])["code"]
    for text in (turns[0]["content"], args):
        assert "# Manually split the data\nimport pandas as pd" in text
        assert "jane.doe@corp.io" not in text and "sk-proj-" not in text
    assert "Thornbury" not in turns[0]["content"]


def test_meta_identifiers_are_kept_and_free_text_scrubbed(step: PiiScrub) -> None:
    meta = {
        "message_tree_id": "6ab24d72-0181-4594-a9cd-deaf170242fb",
        "lang": "zh",
        "conversation_id": "c-0042",
        "title": "Letter for Margaret Thornbury",
        "review_count": 3,
    }
    out = step(frame([record([{"role": "user", "content": "hello"}], meta=meta)]))
    new = json.loads(out["meta"][0])
    assert {k: new[k] for k in ("message_tree_id", "lang", "conversation_id", "review_count")} == {
        k: meta[k] for k in ("message_tree_id", "lang", "conversation_id", "review_count")
    }
    assert "Thornbury" not in new["title"]


def test_other_languages_get_the_tagger_not_english_ner(step: PiiScrub) -> None:
    msgs = [
        {
            "role": "user",
            "content": "¿Quieres jugo, café, te o mate en el desayuno? Me llamo Lucía Fernández, "
            "mi teléfono es +34 612 345 678 y mi correo lucia.fdz@correo.es. Mañana viene Amanda Andrade.",
        },
        {"role": "assistant", "content": "Claro, Lucía. Prefiero café con leche en el desayuno."},
    ]
    rec = {**record(msgs), "language": "es"}
    out = step(frame([rec]).with_columns(pl.lit("es").alias("language")))
    turns = [m["content"] for m in out["messages"][0].to_list()]
    assert "jugo, café, te o mate en el desayuno?" in turns[0]
    assert "Prefiero café con leche en el desayuno." in turns[1]
    # a name with no cue before it: Rampart's, not spaCy's English NER
    for raw in ("Lucía", "Fernández", "612 345 678", "lucia.fdz", "Amanda", "Andrade"):
        assert raw not in turns[0] + turns[1], raw
    assert out[PII_SCAN][0] == "tagger+patterns"
    summary = pii_summary(out)
    assert summary["by_language"] == [
        {"language": "es", "scan": "tagger+patterns", "records": 1, "entities": summary["entities"]}
    ]


def test_german_nouns_are_not_names_to_the_tagger(step: PiiScrub) -> None:
    text = "Der Hauptgang war kalt, aber der Service war freundlich. Das Zimmer hatte keinen Blick aufs Meer."
    msgs = [{"role": "user", "content": text}, {"role": "assistant", "content": "Das tut mir leid."}]
    out = step(frame([record(msgs)]).with_columns(pl.lit("de").alias("language")))
    assert out["messages"][0].to_list()[0]["content"] == text
    assert out[PII_SCAN][0] == "tagger+patterns"


def test_without_rampart_other_languages_get_patterns_only(analyzer) -> None:  # type: ignore[no-untyped-def]
    msgs = [{"role": "user", "content": "¿Quieres jugo, café, te o mate en el desayuno? Me llamo Lucía y mi correo "
                                        "es lucia.fdz@correo.es"},
            {"role": "assistant", "content": "Claro, Lucía. Prefiero café con leche en el desayuno."}]
    step = PiiScrub(PiiConfig(rampart=False), analyzer=analyzer)
    out = step(frame([record(msgs)]).with_columns(pl.lit("es").alias("language")))
    turns = [m["content"] for m in out["messages"][0].to_list()]
    assert "Lucía" not in turns[0] + turns[1] and "lucia.fdz" not in turns[0]
    assert out[PII_SCAN][0] == "patterns"


def test_an_english_turn_of_a_record_read_as_another_language_gets_ner(step: PiiScrub) -> None:
    # the record reads as French (the assistant's turn), but the user wrote English: its names need NER
    msgs = [
        {"role": "user", "content": "Translate to French: Hello, I am Gabriella Szabó and I work with Przemysław."},
        {"role": "assistant", "content": "Bonjour, je suis Gabriella Szabó et je travaille avec Przemysław."},
    ]
    out = step(frame([record(msgs)]).with_columns(pl.lit("fr").alias("language")))
    turns = [m["content"] for m in out["messages"][0].to_list()]
    for raw in ("Gabriella", "Szabó", "Przemysław"):
        assert raw not in turns[0] + turns[1], raw
    assert turns[1].startswith("Bonjour, je suis <PERSON_1> et je travaille avec")
    assert out[PII_SCAN][0] == "ner+patterns"


def test_surrogates_keep_a_person_whole_and_speak_the_record_language(analyzer) -> None:  # type: ignore[no-untyped-def]
    msgs = [
        {"role": "user", "content": "Maciej Borkowski wrote the report. Please thank Borkowski for it."},
        {"role": "assistant", "content": "I will thank Maciej Borkowski."},
    ]
    frame_de = frame([record(msgs)]).with_columns(pl.lit("de").alias("language"))
    step = PiiScrub(PiiConfig(mode="surrogate", ner_languages=["en", "de"]), seed=1, analyzer=analyzer)
    turns = [m["content"] for m in step(frame_de)["messages"][0].to_list()]
    full = turns[1].removeprefix("I will thank ").removesuffix(".")
    assert "Borkowski" not in " ".join(turns) and len(full.split()) >= 2
    assert turns[0] == f"{full} wrote the report. Please thank {full.split()[-1]} for it."
