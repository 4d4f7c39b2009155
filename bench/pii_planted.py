"""Planted-PII chat set: synthetic conversations with planted names, addresses and numbers, run
through the real `curator curate` (defaults) and `curator pack`, then the outputs grepped; plain
presidio is run on the same turns beside it.

The set (seeded, built in a temp dir, never in the repo): conversations written from templates in
12 Faker locales, each planting some of: a full name (also lower-cased), a first name, a street
address (inline, lower-cased, over lines, or with "???" where an export lost the line breaks), a
card number (12-digit Maestro, 19-digit Visa, 2-series Mastercard, 15-digit 2131 JCB, Amex,
16-digit Visa; grouped or not), a phone number (local without area code, dash pairs, short
bracketed, x-extension, "+41 (0)", dotted US...), an email, an IBAN, a passport / tax / licence /
account id, a password (with and without ":"). Half the conversations are an OpenAI fine-tuning
JSONL file, half a ChatGPT data export (custom instructions included). `--split tune` uses the
templates that were looked at while writing the recognizers, `--split held-out` the ones written
blind on 2026-12-02 (see the comment above TUNE_TEMPLATES).

Surviving: a planted value is found (case-insensitive; digits compared without separators for
numbers) in its own conversation's kept record (`kept.jsonl`, mapped back through `source`), so a
surname or first name shared by two conversations is counted once each, not by accident. A name
survives when the full name, its surname or the planted first name is left as a word; an address
when its street part ("12 Main Street") or its postcode is left. Separately, every other file a
user keeps or shares (`kept/` Parquet, `report.json`, `report.html`, the console output, the text
of the packed shards, token ids decoded) is grepped for planted values that no kept record holds:
`leaked_outside_kept_records` must be empty. `dropped/`, `quarantine.parquet` and the work dir
hold raw text by design and are checked for owner-only permissions instead. Plain presidio
(`pii_bench.presidio_baseline`: default recognizers, spaCy sm) replaces every entity it finds
except DATE_TIME/NRP, and its output is checked by the same rules.

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

# Templates: a list of (role, text) turns with {slots}. Slot names: name, name2, first, first2, first3,
# surname, street, city, post, country, address (+ _lines, _qq, _lower), card, phone, email, iban,
# id_kind + id, password. TUNE_TEMPLATES were looked at while writing the recognizers (the first 26
# were split even/odd until 2026-12-02 and both halves have been measured and inspected since);
# HELD_OUT_TEMPLATES were written on 2026-12-02 before any recognizer change of that day and are
# only measured, never inspected for tuning.
TUNE_TEMPLATES: list[list[tuple[str, str]]] = [
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
HELD_OUT_TEMPLATES: list[list[tuple[str, str]]] = [
    [
        ("user", "hey its {first_lower} here lol. my addy is {address_lower}, can u send the package there"),
        ("assistant", "I can't ship packages, but double-check {address_lower} with the courier."),
    ],
    [
        ("user", "Draft an email to my landlord {name} about the broken heater at {address}."),
        ("assistant", "Dear {name},\n\nThe heater at {street} has not worked since Monday.\n\nBest regards,\n{first2}"),
    ],
    [
        ("user", "Here's my CV header, make it look professional:\n\n{name}\n{address_lines}\n{phone} | {email}"),
        ("assistant", "**{name}**\n{street}, {post} {city}, {country} · {phone} · {email}"),
    ],
    [
        ("user", "My daughter {first} and her friend {first2} are coming over. Suggest games for 8-year-olds."),
        ("assistant", "Here are some games {first} and {first2} might enjoy: treasure hunt, charades, musical chairs."),
    ],
    [
        ("user", "Please check this invoice:\nBill to: {name}, {address}\nCard: {card}\nTotal: $84.20"),
        ("assistant", "The invoice is addressed to {name} and charged to {card}; the total looks right."),
    ],
    [
        ("user", "my wifi password is {password} and it stopped working after the update"),
        ("assistant", "Try forgetting the network and entering {password} again."),
    ],
    [
        ("user", "Write a birthday message for my colleague {name}. She sits next to {first2}."),
        ("assistant", "Happy birthday, {first}! The whole team, {first2} included, wishes you a great year."),
    ],
    [
        ("user", "Cancel the subscription on my {id_kind} {id}, registered to {email}. Phone on file {phone}."),
        ("assistant", "I can't cancel it, but support can if you give them {email} and {phone}."),
    ],
    [
        ("user", "Meeting notes. Attendees: {name}, {name2}, {first3}. Action: {first} sends the deck by Friday."),
        ("assistant", "Summary: {first} sends the deck; {first3} and {name2} review it."),
    ],
    [
        ("user", "Send the contract to {name} at {address_qq}"),
        ("assistant", "Address the envelope to {name}, {address_qq}."),
    ],
    [
        ("user", "Who lives at {address}? I found a wallet that belongs to {name}."),
        ("assistant", "I can't look people up. Please hand {name}'s wallet to the police."),
    ],
    [
        ("user", "Is {phone} a real number? Someone called from 'the bank' and read me my card {card}."),
        ("assistant", "That is a scam. Never confirm {card} to a caller, and report {phone} to your bank."),
    ],
    [
        ("user", "Translate to French: Hello, I am {name} and my number is {phone}."),
        ("assistant", "Bonjour, je m'appelle {name} et mon numéro est le {phone}."),
    ],
    [
        ("user", "ok so {first} said i should ask u. username {email} pwd {password}"),
        ("assistant", "Please don't share passwords here, even if {first} suggested it."),
    ],
    [
        ("user", "Is this address format right? {street}, {city} {post}, {country}"),
        ("assistant", "Usually it is written:\n{street}\n{post} {city}\n{country}"),
    ],
    [
        ("user", "Transfer 200 EUR from {iban} to {name}."),
        ("assistant", "I can't move money. Ask your bank to send it from {iban} to {name}."),
    ],
    [
        ("system", "You are a helpful assistant for {name} ({email}), who lives at {address}."),
        ("user", "What's a quick dinner I can cook tonight?"),
        ("assistant", "A vegetable stir-fry with rice takes about 20 minutes."),
    ],
    [
        ("user", "{name} here. I need a new {id_kind}, the old one ({id}) expired."),
        ("assistant", "Renew the {id_kind} {id} at the office that issued it, {first}."),
    ],
    [
        ("user", "visa {card} cvv 381 exp 11/27, is this the right format for the form?"),
        ("assistant", "Never paste {card} and its CVV into a chat."),
    ],
    [
        ("user", "grandma {name_lower} moved to {address_lower}, write her a card from me and {first2}"),
        ("assistant", "Dear Grandma,\n\nWe hope you love the new place! Love, {first2}"),
    ],
]
TEMPLATES = {"tune": TUNE_TEMPLATES, "held-out": HELD_OUT_TEMPLATES, "all": TUNE_TEMPLATES + HELD_OUT_TEMPLATES}
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
    templates = TEMPLATES[split]
    convs = []
    for k in range(n):
        t = k % len(templates)
        loc = rng.choice(LOCALES)
        fake = fakers[loc]
        first, surname = fake.first_name(), fake.last_name()
        first2, surname2 = fake.first_name(), fake.last_name()
        street, city, post = fake.street_address().replace("\n", " "), fake.city(), fake.postcode()
        country = fake.current_country() if hasattr(fake, "current_country") else "France"
        id_kind = rng.choice(ID_KINDS)
        slots = {
            "name": f"{first} {surname}",
            "first": first,
            "surname": surname,
            "name_lower": f"{first} {surname}".lower(),
            "first_lower": first.lower(),
            "name2": f"{first2} {surname2}",
            "first2": first2,
            "first3": fake.first_name(),
            "street": street,
            "city": city,
            "post": post,
            "country": country,
            "address": f"{street}, {post} {city}",
            "address_lower": f"{street}, {post} {city}".lower(),
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
        text = " ".join(x for _, x in templates[t])
        planted: list[tuple[str, str]] = []
        if re.search(r"\{(name|name_lower|surname)\}", text):
            planted.append(("name", f"{first} {surname}"))
        if "{name2}" in text:
            planted.append(("name", f"{first2} {surname2}"))
        for key in ("first", "first2", "first3"):
            if "{" + key + "}" in text or (key == "first" and "{first_lower}" in text):
                planted.append(("first_name", slots[key]))
        if re.search(r"\{(address(_lines|_qq|_lower)?|street)\}", text):
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
        turns = [(role, body.format(**slots)) for role, body in templates[t]]
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


def _left(kind: str, value: str, low: str, digits_only: str, words: set[str]) -> bool:
    """Whether a planted value is left in a text (already folded: `low`, its digits, its words)."""
    if kind == "name":
        full = " ".join(value.split()).casefold()
        surname = value.split()[-1].casefold()
        return full in low or (len(surname) >= 3 and surname in words)
    if kind == "first_name":
        return value.casefold() in words
    if kind == "address":
        street, post = value.split("\x00")
        whole_post = re.search(rf"(?<![\w-]){re.escape(post.casefold())}(?![\w-])", low)  # not inside another number
        return " ".join(street.split()).casefold() in low or (len(post) >= 4 and whole_post is not None)
    if kind in ("card", "phone", "iban", "id") and sum(ch.isdigit() for ch in value) >= 6:
        return re.sub(r"[^\d]", "", value) in digits_only or value.casefold() in low
    return value.casefold() in low


def _fold(text: str) -> tuple[str, str, set[str]]:
    low = " ".join(text.split()).casefold()
    return low, re.sub(r"[^\d]", "", text), set(re.findall(r"\w+", low))


def surviving(convs: list[dict[str, Any]], texts: list[str]) -> tuple[dict[str, list[int]], list[str]]:
    """kind -> [planted, surviving], each value looked for in its own conversation's output text
    (`texts[i]` for `convs[i]`), under the rules in the module docstring; and the survivors."""
    counts: dict[str, list[int]] = {}
    survivors = []
    for conv, text in zip(convs, texts, strict=True):
        folded = _fold(text)
        for kind, value in conv["planted"]:
            c = counts.setdefault(kind, [0, 0])
            c[0] += 1
            if _left(kind, value, *folded):
                c[1] += 1
                survivors.append(f"{kind} template {conv['template']} {conv['locale']}: {value!r}")
    return counts, survivors


def kept_texts(out: Path, n: int) -> list[str]:
    """Each conversation's kept record as text: every string in it, one per line ("" when it was not
    kept; the JSON itself would hide a word behind an escaped newline), mapped back through `source`:
    OpenAI line i is conversation 2i, ChatGPT export conversation i is 2i + 1."""
    texts = [""] * n
    for line in (out / "kept.jsonl").read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        src = record["source"]
        k = 2 * src["index"] + (src["format"] == "chatgpt")
        texts[k] += "\n".join(_strings(record)) + "\n"
    return texts


def _strings(value: Any) -> list[str]:
    """Every string inside a decoded JSON value."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return []


def leaked_outside_kept(convs: list[dict[str, Any]], kept: list[str], shared: str) -> list[str]:
    """Planted values found in the shared outputs (reports, console, shards, kept Parquet) while absent
    from every kept record: a leak by another path than the records themselves (must be empty)."""
    folded_shared, folded_kept = _fold(shared), _fold("\n".join(kept))
    cased_words = set(re.findall(r"\w+", shared))
    return [
        f"{kind}: {value!r}"
        for conv in convs
        for kind, value in conv["planted"]
        if _left(kind, value, *folded_shared)
        and not _left(kind, value, *folded_kept)
        and _cased_left(kind, value, folded_shared[0], cased_words)
    ]


def _cased_left(kind: str, value: str, low: str, cased_words: set[str]) -> bool:
    """A surname or first name that is an English word ("May", "Rose") is left only as written, with its
    capital: the tool's own console text ("excerpts may hold personal data") is not a leak."""
    if kind == "name":
        return " ".join(value.split()).casefold() in low or value.split()[-1] in cased_words
    if kind == "first_name":
        return value in cased_words
    return True


def presidio_texts(convs: list[dict[str, Any]]) -> tuple[list[str], float]:
    """Plain presidio (pii_bench's baseline) on the same turns: every entity it finds, except the
    DATE_TIME/NRP types ours also leaves, replaced by <TYPE>; and the seconds it took."""
    sys.path.insert(0, str(Path(__file__).parent))
    from pii_bench import presidio_baseline

    from curator.steps.pii import DEFAULT_EXCLUDED, PiiConfig

    cfg = PiiConfig()
    engine = presidio_baseline()
    turns = [text for conv in convs for _, text in conv["turns"]]
    engine.analyze_iterator(turns[:8], language="en")  # lazy loading
    start = time.perf_counter()
    results = engine.analyze_iterator(
        turns, language="en", batch_size=cfg.batch_size, score_threshold=cfg.score_threshold
    )
    seconds = time.perf_counter() - start
    scrubbed = iter(
        _replace_spans(text, [(r.start, r.end, r.entity_type) for r in rs if r.entity_type not in DEFAULT_EXCLUDED])
        for text, rs in zip(turns, results, strict=True)
    )
    return ["\n".join(next(scrubbed) for _ in conv["turns"]) for conv in convs], seconds


def _replace_spans(text: str, spans: list[tuple[int, int, str]]) -> str:
    """`text` with every span (overlaps merged) replaced by <TYPE>."""
    out, pos = [], 0
    for start, end, etype in sorted(spans):
        if end <= pos:
            continue
        out.append(text[pos : max(pos, start)] + f"<{etype}>")
        pos = end
    return "".join(out) + text[pos:]


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
    ap.add_argument("--seed", type=int, default=11, help="picks locales, names and numbers")
    ap.add_argument("--keep", type=Path, default=None, help="keep inputs and outputs in this dir")
    ap.add_argument("--json", type=Path, default=Path(__file__).parent / "results" / "pii_planted.json")
    args = ap.parse_args()
    where = Path(tempfile.mkdtemp(prefix="pii_planted_")) if args.keep is None else args.keep
    where.mkdir(parents=True, exist_ok=True)
    convs = build(args.n, args.split, args.seed)
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
    kept = kept_texts(out, len(convs))
    counts, survivors = surviving(convs, kept)
    leaks = leaked_outside_kept(convs, kept, shared_text(out, shards, console + pack_console))
    plain, plain_seconds = presidio_texts(convs)
    plain_counts, _ = surviving(convs, plain)
    report = json.loads((out / "report.json").read_text())

    def table(c: dict[str, list[int]]) -> dict[str, Any]:
        rates = {k: {"planted": v[0], "surviving": v[1], "rate": round(v[1] / v[0], 4)} for k, v in sorted(c.items())}
        rates["structured"] = {
            "planted": sum(c.get(k, [0, 0])[0] for k in NUMBER_KINDS),
            "surviving": sum(c.get(k, [0, 0])[1] for k in NUMBER_KINDS),
        }
        return rates

    result = {
        "split": args.split,
        "seed": args.seed,
        "conversations": len(convs),
        "curate_seconds": round(seconds, 1),
        "presidio_analyze_seconds": round(plain_seconds, 1),
        "kept": report["accounting"]["kept"],
        "read": report["accounting"]["read"],
        "surviving": table(counts),
        "surviving_plain_presidio": table(plain_counts),
        "survivors": survivors,
        "leaked_outside_kept_records": leaks,
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
