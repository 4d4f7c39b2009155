"""Planted-PII chat set: synthetic conversations with planted names, addresses and numbers, run
through the real `curator curate` (defaults) and `curator pack`, then every output file grepped.

The set (seeded, built in a temp dir, never in the repo): conversations written from templates in
12 Faker locales, each planting some of: a full name, a first name, a street address (inline, over
lines, or with "???" where an export lost the line breaks), a card number (12-digit Maestro, 19-digit
Visa, 2-series Mastercard, 15-digit 2131 JCB, Amex, 16-digit Visa; grouped or not), a phone number
(local without area code, dash pairs, short bracketed, x-extension, "+41 (0)", dotted US...), an
email, an IBAN, a passport / tax / licence / account id, a password (with and without ":"). Half
the conversations are an OpenAI fine-tuning JSONL file, half a ChatGPT data export (custom
instructions included). Templates alternate between a **tune** half (even template index: used
while writing the recognizers) and a **held-out** half (odd: only measured); `--split` picks one.

Surviving: a planted value is found (case-insensitive; digits compared without separators for
numbers) in anything the user keeps or shares: `kept/` Parquet, `kept.jsonl`, `report.json`,
`report.html`, the console output, and the text of the packed shards (token ids decoded). A name
survives when the full name, its surname or the planted first name is left; an address when its
street part ("12 Main Street") or its postcode is left. `dropped/`, `quarantine.parquet` and the
work dir hold raw text by design and are checked for owner-only permissions instead.

Run: `.venv/bin/python bench/pii_planted.py [--split held-out|tune|all] [--n 300] [--keep DIR]`
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import stat
import string
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import polars as pl

ROOT = Path(__file__).resolve().parents[1]
LOCALES = ("en_US", "en_GB", "de_DE", "fr_FR", "it_IT", "es_ES", "pl_PL", "nl_NL", "cs_CZ", "hu_HU", "pt_BR", "da_DK")
NUMBER_KINDS = ("card", "phone", "id", "iban", "email", "password")

# Templates: a list of (role, text) turns with {slots}. Slot names: name, first, surname, address,
# card, phone, email, iban, id_kind + id, password. Even index = tune, odd index = held-out.
TEMPLATES: list[list[tuple[str, str]]] = [
    [
        ("user", "Hi, my name is {name} and I need to update my card {card} on the account."),
        ("assistant", "Thanks {first}. I can't change cards here; please call your bank."),
        ("user", "ok. my phone is {phone} if they need it"),
    ],
    [
        ("user", "Can you write a short cover letter for me? I'm {name}, I live at {address}. Email {email}."),
        ("assistant", "Dear Hiring Manager,\n\nMy name is {name} and ...\n\nKind regards,\n{name}"),
    ],
    [
        ("user", "Please format this address for an envelope:\n{name}\n{address_lines}"),
        ("assistant", "Here it is:\n\n{name}\n{address_lines}"),
    ],
    [
        ("user", "my iban is {iban} and the transfer to {first} failed, why"),
        ("assistant", "An IBAN like {iban} can fail when the name does not match. Check with {first}."),
    ],
    [
        ("system", "The user's name is {name}. Be concise."),
        ("user", "What is a good password? Mine is {password}"),
        ("assistant", "Avoid sharing it. {password} is strong but now exposed; change it."),
    ],
    [
        ("user", "I lost my wallet with my {id_kind} {id}. What do I do?"),
        ("assistant", "Report the {id_kind} {id} as lost to the authority that issued it."),
    ],
    [
        ("user", "Log in as {email} with password {password} and check the invoice for {name}."),
        ("assistant", "I can't log in to accounts, but you can check it yourself."),
    ],
    [
        ("user", "{name} lives at {address}. Write a polite note asking {first} to move the car."),
        ("assistant", "Hi {first},\n\nCould you move your car? Thanks!"),
    ],
    [
        ("user", "Text {first} at {phone} and tell {first} the meeting moved."),
        ("assistant", "I can't send texts, but here is a message you can send to {phone}."),
    ],
    [("user", "Shipping label: {address_qq}"), ("assistant", "The label reads: {address_qq}")],
    [
        ("user", "my card number is {card} exp 04/29, is it visa or mastercard?"),
        ("assistant", "I can't look up {card}. The first digits tell the network."),
    ],
    [
        ("user", "Our team: {first}, {first2} and {first3}. {first} leads. Write a standup agenda."),
        ("assistant", "1. {first}: updates\n2. {first2}: blockers\n3. {first3}: demo"),
    ],
    [
        ("user", "Fill in the form: name {name}, tel. {phone}, {id_kind}: {id}"),
        ("assistant", "Name: {name}\nPhone: {phone}\n{id_kind}: {id}"),
    ],
    [
        ("user", "A story by {name} about a dog. Make it funny."),
        ("assistant", "Once upon a time, {first} had a dog named Biscuit..."),
    ],
    [
        ("user", "pay {card} for order 88213, send receipt to {email}"),
        ("assistant", "I can't process payments. Receipts would go to {email}."),
    ],
    [
        ("user", "how do i wire money to {iban}? recipient {name}, {address}"),
        ("assistant", "Give your bank the IBAN {iban} and the name {name}."),
    ],
    [("user", "Reach me on {phone} or at home: {address_lines}"), ("assistant", "Noted: {phone}.")],
    [
        ("user", "I'm {first}. {surname} is my last name. Can you spell {name} in NATO alphabet?"),
        ("assistant", "Sure, {first} {surname}: ..."),
    ],
    [
        ("user", "Set up the wifi with password {password} for the guests of {name}."),
        ("assistant", "Share the password {password} only with the guests."),
    ],
    [
        ("user", "Translate to German: my {id_kind} is {id}, my name is {name}."),
        ("assistant", "Mein Ausweis ist {id}, mein Name ist {name}."),
    ],
    # added after the first held-out run, which had no card, phone or password among the odd
    # (held-out) templates: the odd ones below were measured without being run before
    [("user", "charge {card} please"), ("assistant", "I cannot charge cards.")],
    [
        ("user", "Is {card} a valid card number? It belongs to {name}."),
        ("assistant", "I can't validate {card}, but the Luhn check is easy to run yourself."),
    ],
    [("user", "call {phone}"), ("assistant", "I cannot place calls.")],
    [
        ("user", "Write an out-of-office reply. Urgent matters: {first2} on {phone}, or email {email}."),
        ("assistant", "I'm away until Monday. For urgent matters contact {first2} ({phone}) or {email}."),
    ],
    [("user", "password: {password}"), ("assistant", "Don't paste passwords here.")],
    [
        ("user", "The router admin login is admin / {password} and my neighbour {name} uses it too"),
        ("assistant", "Change {password} now and give {first} a separate guest network."),
    ],
]
ID_KINDS = (
    "passport number",
    "tax id",
    "driver's license",
    "account number",
    "passport no.",
    "Steuer-ID",
    "NHS number",
)


def _luhn_complete(prefix: str) -> str:
    """`prefix` plus its Luhn check digit."""
    total = 0
    for i, ch in enumerate(reversed(prefix)):
        d = int(ch)
        if i % 2 == 0:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return prefix + str((10 - total % 10) % 10)


def make_card(rng: random.Random) -> str:
    """A Luhn-valid card number of a kind presidio's regex misses or finds, in a written layout."""
    prefix, length = rng.choice(
        [
            ("50", 12),
            ("63", 12),
            ("67", 12),
            ("4", 19),
            ("2221", 16),
            ("2720", 16),
            ("2131", 15),
            ("34", 15),
            ("4", 16),
            ("51", 16),
            ("6011", 16),
            ("35", 16),
        ]
    )
    digits = _luhn_complete(prefix + "".join(rng.choice(string.digits) for _ in range(length - len(prefix) - 1)))
    layout = rng.random()
    if layout < 0.4:
        return " ".join(digits[i : i + 4] for i in range(0, len(digits), 4))
    if layout < 0.6:
        return "-".join(digits[i : i + 4] for i in range(0, len(digits), 4))
    return digits


def make_phone(rng: random.Random, fake: Any) -> str:
    """A phone number in one of the layouts people write (many libphonenumber calls invalid)."""
    d = lambda n: "".join(rng.choice(string.digits) for _ in range(n))  # noqa: E731
    return rng.choice(
        [
            f"{rng.randint(2, 9)}{d(3)} {d(4)}",
            f"{rng.randint(2, 9)}{d(2)} {d(4)}",
            f"{d(2)}-{d(2)}-{d(2)}-{d(2)}",
            f"({d(2)}) {d(3)}-{d(3)}",
            f"+1-{rng.randint(2, 9)}{d(2)}-{d(3)}-{d(4)}x{d(3)}",
            f"+41 (0){d(2)} {d(3)} {d(2)} {d(2)}",
            f"{rng.randint(2, 9)}{d(2)}.{d(3)}.{d(4)}",
            f"({rng.randint(2, 9)}{d(2)}) {d(3)}-{d(4)}",
            f"+44 20 {d(4)} {d(4)}",
            fake.phone_number(),
        ]
    )


def make_id(rng: random.Random, kind: str) -> str:
    """An id value of the written kind."""
    d = lambda n: "".join(rng.choice(string.digits) for _ in range(n))  # noqa: E731
    up = lambda n: "".join(rng.choice(string.ascii_uppercase) for _ in range(n))  # noqa: E731
    return {
        "passport number": f"{up(1)}{d(8)}",
        "passport no.": f"{up(2)}{d(7)}",
        "tax id": f"{d(2)}-{d(7)}",
        "driver's license": f"{up(1)}{d(3)}-{d(4)}-{d(4)}",
        "account number": d(12),
        "Steuer-ID": f"{d(2)} {d(3)} {d(3)} {d(3)}",
        "NHS number": f"{d(3)} {d(3)} {d(4)}",
    }[kind]


def make_password(rng: random.Random) -> str:
    """A password with letters, digits and symbols."""
    chars = string.ascii_letters + string.digits + "!#$%&*?@"
    while True:
        pw = "".join(rng.choice(chars) for _ in range(rng.randint(8, 14)))
        if re.search(r"\d", pw) and re.search(r"[a-zA-Z]", pw):
            return pw


def build(n: int, split: str, seed: int = 11) -> list[dict[str, Any]]:
    """`n` conversations: each {turns: [(role, text)], planted: [(kind, value)], template, locale}."""
    from faker import Faker

    rng = random.Random(seed)
    fakers = {loc: Faker(loc) for loc in LOCALES}
    for i, f in enumerate(fakers.values()):
        f.seed_instance(seed + i)
    pool = [i for i in range(len(TEMPLATES)) if split == "all" or (i % 2 == 0) == (split == "tune")]
    convs = []
    for k in range(n):
        t = pool[k % len(pool)]
        loc = rng.choice(LOCALES)
        fake = fakers[loc]
        first, surname = fake.first_name(), fake.last_name()
        street, city, post = fake.street_address().replace("\n", " "), fake.city(), fake.postcode()
        country = fake.current_country() if hasattr(fake, "current_country") else "France"
        id_kind = rng.choice(ID_KINDS)
        slots = {
            "name": f"{first} {surname}",
            "first": first,
            "surname": surname,
            "first2": fake.first_name(),
            "first3": fake.first_name(),
            "address": f"{street}, {post} {city}",
            "address_lines": f"{street}\n{post} {city}\n{country}",
            "address_qq": f"{street}???{post} {city}???{country}",
            "card": make_card(rng),
            "phone": make_phone(rng, fake),
            "email": fake.email(),
            "iban": fake.iban(),
            "id_kind": id_kind,
            "id": make_id(rng, id_kind),
            "password": make_password(rng),
        }
        text = " ".join(x for _, x in TEMPLATES[t])
        planted: list[tuple[str, str]] = []
        if "{name}" in text or "{surname}" in text:
            planted.append(("name", f"{first} {surname}"))
        for key in ("first", "first2", "first3"):
            if "{" + key + "}" in text:
                planted.append(("first_name", slots[key]))
        if re.search(r"\{address(_lines|_qq)?\}", text):
            planted.append(("address", f"{street}\x00{post}"))
        for kind, key in (
            ("card", "card"),
            ("phone", "phone"),
            ("email", "email"),
            ("iban", "iban"),
            ("id", "id"),
            ("password", "password"),
        ):
            if "{" + key + "}" in text:
                planted.append((kind, slots[key]))
        turns = [(role, body.format(**slots)) for role, body in TEMPLATES[t]]
        convs.append({"turns": turns, "planted": planted, "template": t, "locale": loc})
    return convs


def write_inputs(convs: list[dict[str, Any]], where: Path) -> list[Path]:
    """Half as an OpenAI fine-tuning JSONL file, half as a ChatGPT data export."""
    jsonl = where / "planted_openai.jsonl"
    with open(jsonl, "w", encoding="utf-8") as fh:
        for conv in convs[0::2]:
            fh.write(json.dumps({"messages": [{"role": r, "content": c} for r, c in conv["turns"]]}) + "\n")
    export = []
    for k, conv in enumerate(convs[1::2]):
        mapping: dict[str, Any] = {"root": {"id": "root", "message": None, "parent": None, "children": []}}
        parent = "root"
        for j, (role, text) in enumerate(conv["turns"]):
            node = f"n{k}-{j}"
            content = (
                {"content_type": "user_editable_context", "user_profile": text, "user_instructions": ""}
                if role == "system"
                else {"content_type": "text", "parts": [text]}
            )
            mapping[node] = {
                "id": node,
                "message": {
                    "id": node,
                    "author": {"role": "user" if role == "system" else role, "name": None, "metadata": {}},
                    "content": content,
                    "recipient": "all",
                    "metadata": {},
                    "create_time": 1700000000 + j,
                },
                "parent": parent,
                "children": [],
            }
            mapping[parent]["children"].append(node)
            parent = node
        export.append(
            {
                "title": f"Planted {k}",
                "create_time": 1700000000.0,
                "mapping": mapping,
                "current_node": parent,
                "id": f"conv-{k}",
            }
        )
    chatgpt = where / "chatgpt_export" / "conversations.json"
    chatgpt.parent.mkdir()
    chatgpt.write_text(json.dumps(export), encoding="utf-8")
    return [jsonl, chatgpt]


def run_cli(args: list[str], env: dict[str, str]) -> tuple[str, float]:
    """Run `python -m curator.cli ARGS`; returns console output (stdout + stderr) and seconds."""
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "curator.cli", *args], capture_output=True, text=True, env=env, cwd=ROOT, timeout=3600
    )
    if proc.returncode != 0:
        raise SystemExit(f"curator {' '.join(args[:1])} failed:\n{proc.stderr[-3000:]}")
    return proc.stdout + proc.stderr, time.perf_counter() - start


def shared_text(out: Path, shards: Path, console: str) -> str:
    """Everything a user keeps or shares, as one text: kept records, reports, console, shard text."""
    blobs = [console]
    for path in sorted(out.rglob("*")):
        if not path.is_file() or path.is_relative_to(out / "dropped") or path.is_relative_to(out / "_work"):
            continue
        if path.name == "quarantine.parquet":
            continue
        blobs.append(
            pl.read_parquet(path).write_ndjson() if path.suffix == ".parquet" else path.read_text("utf-8", "replace")
        )
    blobs.append(shard_text(shards, out.parent / "tokenizer"))
    for path in sorted(shards.rglob("*")):
        if path.is_file() and path.suffix != ".parquet":
            blobs.append(path.read_text("utf-8", "replace"))
    return "\n".join(blobs)


def demo_tokenizer(path: Path) -> Path:
    """A small BPE tokenizer trained on sample_data text (never on the planted values)."""
    from trainer.tiny import train_tokenizer

    texts = (ROOT / "sample_data" / "oasst_en_60_trees.jsonl").read_text(encoding="utf-8").splitlines()
    return train_tokenizer(texts, path, vocab_size=1024)


def shard_text(shards: Path, tokenizer: Path) -> str:
    """The packed shards' token ids decoded back to text with the tokenizer they were packed with."""
    from curator.format.chat import load_tokenizer

    tok, _ = load_tokenizer(tokenizer)
    texts = []
    for part in sorted(shards.rglob("*.parquet")):
        frame = pl.read_parquet(part)
        if "input_ids" in frame.columns:
            texts.extend(tok.decode(ids) for ids in frame["input_ids"].to_list())
    return "\n".join(texts)


def surviving(convs: list[dict[str, Any]], text: str) -> dict[str, list[int]]:
    """kind -> [planted, surviving] under the rules in the module docstring."""
    low = " ".join(text.split()).casefold()
    digits_only = re.sub(r"[^\d]", "", text)
    words = set(re.findall(r"\w+", low))
    counts: dict[str, list[int]] = {}
    for conv in convs:
        for kind, value in conv["planted"]:
            c = counts.setdefault(kind, [0, 0])
            c[0] += 1
            if kind == "name":
                full = " ".join(value.split()).casefold()
                surname = value.split()[-1].casefold()
                left = full in low or (len(surname) >= 3 and surname in words)
            elif kind == "first_name":
                left = value.casefold() in words
            elif kind == "address":
                street, post = value.split("\x00")
                left = " ".join(street.split()).casefold() in low or (len(post) >= 4 and post.casefold() in low)
            elif kind in ("card", "phone", "iban", "id") and sum(ch.isdigit() for ch in value) >= 6:
                left = re.sub(r"[^\d]", "", value) in digits_only or value.casefold() in low
            else:
                left = value.casefold() in low
            c[1] += left
    return counts


def check_private(out: Path) -> list[str]:
    """Files or dirs that may hold raw text and are readable by others (must be empty)."""
    bad = []
    for path in [
        out / "dropped",
        out / "quarantine.parquet",
        out / "_work",
        *(out / "dropped").rglob("*"),
        *(out / "_work").rglob("*"),
    ]:
        if path.exists() and stat.S_IMODE(path.stat().st_mode) & 0o077:
            bad.append(f"{path.relative_to(out)} {oct(stat.S_IMODE(path.stat().st_mode))}")
    return bad


def main() -> None:
    """Build the set, curate and pack it with defaults, grep the outputs, print and save the figures."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--split", choices=("held-out", "tune", "all"), default="held-out")
    ap.add_argument("--n", type=int, default=300, help="conversations")
    ap.add_argument("--keep", type=Path, default=None, help="keep inputs and outputs in this dir")
    ap.add_argument("--json", type=Path, default=Path(__file__).parent / "results" / "pii_planted.json")
    args = ap.parse_args()
    where = Path(tempfile.mkdtemp(prefix="pii_planted_")) if args.keep is None else args.keep
    where.mkdir(parents=True, exist_ok=True)
    convs = build(args.n, args.split)
    inputs = write_inputs(convs, where)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    out, shards = where / "curated", where / "shards"
    old_umask = os.umask(0o022)  # what most users have: the private files must not depend on it
    try:
        console, seconds = run_cli(["curate", *map(str, inputs), "--out", str(out), "--jsonl", "--workers", "1"], env)
        tokenizer = demo_tokenizer(where / "tokenizer")
        pack_console, _ = run_cli(["pack", str(out), "--out", str(shards), "--tokenizer", str(tokenizer)], env)
    finally:
        os.umask(old_umask)
    text = shared_text(out, shards, console + pack_console)
    counts = surviving(convs, text)
    report = json.loads((out / "report.json").read_text())
    structured = [sum(counts.get(k, [0, 0])[i] for k in NUMBER_KINDS) for i in (0, 1)]
    result = {
        "split": args.split,
        "conversations": len(convs),
        "curate_seconds": round(seconds, 1),
        "kept": report["accounting"]["kept"],
        "read": report["accounting"]["read"],
        "surviving": {
            k: {"planted": v[0], "surviving": v[1], "rate": round(v[1] / v[0], 4)} for k, v in sorted(counts.items())
        },
        "structured": {"planted": structured[0], "surviving": structured[1]},
        "work_dir_after_run": sorted(str(p.relative_to(out)) for p in (out / "_work").rglob("*")),
        "readable_by_others": check_private(out),
        "templates": sorted(Counter(c["template"] for c in convs)),
    }
    print(json.dumps(result, indent=1))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    if args.keep is None:
        shutil.rmtree(where)


if __name__ == "__main__":
    main()
