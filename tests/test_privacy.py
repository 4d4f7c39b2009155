"""Nothing readable by other users holds raw text, and nothing a user keeps or shares holds a planted value.

A real `curator curate` run with defaults (PII on) over planted chats, under a umask that would make
every new file world-writable, then the permissions of every file and the text of every output.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import polars as pl
import pytest

from curator.cli import main
from curator.format.chat import load_tokenizer
from curator.io import DEFAULT_MODE, make_dirs, private_dir, write_json, write_parquet

PLANTED = {
    "name": "Wiebke Sørensen",
    "first": "Wiebke",
    "surname": "Sørensen",
    "street": "Pusztaszéki utca 148",
    "postcode": "9189",
    "card": "5012 3456 7896",  # 12-digit Maestro, Luhn-valid
    "phone": "60-56-85-91",
    "email": "w.sorensen@fjordpost.dk",
    "password": "Qr7!dke#39",
    "passport": "X12345678",
    "participant": "kjell_92",
}


def _chats() -> list[dict]:
    p = PLANTED
    return [
        {"messages": [
            {"role": "system", "content": f"The user's name is {p['name']}."},
            {"role": "user", "content": f"ship to {p['street']}, H-{p['postcode']} Budapest, card {p['card']}"},
            {"role": "assistant", "content": f"Noted, {p['first']}. I will not store card numbers."},
            {"role": "user", "content": f"tel {p['phone']}, mail {p['email']}, log in with password {p['password']}"},
            {"role": "assistant", "content": "Please do not share passwords."},
        ]},
        {"messages": [
            {"role": "user", "name": p["participant"], "content": f"my passport number {p['passport']} expired"},
            {"role": "assistant", "content": f"Renew it soon, {p['participant']}."},
        ]},
        {"messages": [{"role": "user", "content": ""}]},  # dropped (empty turn): lands in dropped/, owner-only
    ]


def test_files_written_below_a_private_dir_are_private_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        work = private_dir(tmp_path / "out" / "_work")
        write_json({"a": 1}, work / "state.json")
        write_parquet(pl.DataFrame({"x": [1]}), work / "ingest" / "deep" / "part.parquet")
        make_dirs(work / "global" / "phase01")
        write_json({"b": 2}, tmp_path / "out" / "report.json")
    finally:
        os.umask(old)
    for path in (work, work / "ingest", work / "ingest" / "deep", work / "global" / "phase01"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o700, path
    for path in (work / "state.json", work / "ingest" / "deep" / "part.parquet"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    # outside a private dir a file gets what plain open() gives under the process's umask at start
    assert stat.S_IMODE((tmp_path / "out" / "report.json").stat().st_mode) == DEFAULT_MODE


@pytest.mark.slow
def test_curate_leaves_no_raw_value_in_shared_outputs_and_nothing_readable_by_others(
    tmp_path: Path, capsys: pytest.CaptureFixture, tiny_tokenizer_dir: Path
) -> None:
    src = tmp_path / "chats.jsonl"
    src.write_text("".join(json.dumps(c, ensure_ascii=False) + "\n" for c in _chats()), encoding="utf-8")
    out = tmp_path / "out"
    old = os.umask(0)
    shards = tmp_path / "shards"
    try:
        assert main(["curate", str(src), "--out", str(out), "--jsonl", "--workers", "1"]) == 0
        assert main(["pack", str(out), "--out", str(shards), "--tokenizer", str(tiny_tokenizer_dir)]) == 0
    finally:
        os.umask(old)
    console = capsys.readouterr()

    # the work dir keeps no raw part once the run is done; what may hold raw text is owner-only
    left = sorted(str(p.relative_to(out)) for p in (out / "_work").rglob("*") if p.is_file())
    assert left == ["_work/state.json"]
    private = [out / "_work", out / "dropped", out / "quarantine.parquet", *(out / "dropped").iterdir()]
    assert list((out / "dropped").iterdir()), "the empty-turn record should have been dropped"
    for path in private:
        assert stat.S_IMODE(path.stat().st_mode) & 0o077 == 0, path

    # nothing the user keeps or shares holds a planted value: curate's outputs, the console, the shards
    # (their manifest, and their token ids decoded back to text: the ids themselves are only numbers)
    shared = [console.out, console.err]
    shard_parts = set(shards.rglob("*.parquet"))
    skipped = {out / "quarantine.parquet", *shard_parts}  # raw by design (owner-only, above) / decoded below
    for path in [*out.rglob("*"), *shards.rglob("*")]:
        if path.is_file() and not path.is_relative_to(out / "dropped") and path not in skipped:
            shared.append(pl.read_parquet(path).write_ndjson() if path.suffix == ".parquet" else path.read_text())
    tok, _ = load_tokenizer(tiny_tokenizer_dir)
    frames = [pl.read_parquet(part) for part in shard_parts]
    rows = [tok.decode(ids) for f in frames if "input_ids" in f.columns for ids in f["input_ids"].to_list()]
    assert rows and any("<PERSON_" in row for row in rows)  # the scrubbed text is what was packed
    shared += rows
    blob = "\n".join(shared).casefold()
    digits = "".join(c for c in blob if c.isdigit())
    for kind, value in PLANTED.items():
        assert value.casefold() not in blob, kind
        if sum(c.isdigit() for c in value) >= 8:
            assert "".join(c for c in value if c.isdigit()) not in digits, kind
    report = json.loads((out / "report.json").read_text())
    assert report["pii"]["by_language"][0]["scan"] == "ner+patterns"
