"""PII on prose in other languages: what each scan mode finds on real sentences that hold no planted PII.

Data: the test split of Universal Dependencies treebanks (CC BY-SA 4.0, except Italian ISDT, whose
own agreement applies; only read here, never copied into the repo): UD_Spanish-GSD, UD_German-GSD,
UD_French-GSD, UD_Dutch-Alpino, UD_Italian-ISDT, UD_Polish-LFG, UD_Portuguese-Bosque (news, wiki,
reviews and blogs). Put `<lang>.conllu` files (`es.conllu`, `de.conllu`...) in a directory and pass
it as `--ud DIR`, e.g. from a clone of each repo: `cp UD_Spanish-GSD/es_gsd-ud-test.conllu DIR/es.conllu`.
Without the files the benchmark says so and stops.

Per language, the first `--n` sentences (their `# text`) go through `PiiScrub.analyze_texts` in the
three prose modes (`curator/steps/pii.py`, `_prose_mode`):
* `ner`: spaCy's English NER + Rampart + patterns (what English prose gets);
* `tagger`: Rampart + patterns (the default for prose outside `pii.ner_languages` since 2026-12-02);
* `patterns`: the language-independent recognizers only (the default before).
Reported: entities per 1,000 characters; PERSON spans on words that UD does not tag PROPN (no proper
noun in the span: a false positive, except where UD's tags miss a name, as "Ibsen" tagged NOUN) per
1,000 characters; PERSON spans on a proper noun (names of real people in the news, mostly: the
tagger's recall proxy); and seconds. Planted names in these languages are measured by
`bench/pii_planted.py`.

Run: `PYTHONPATH=. .venv/bin/python bench/pii_multilingual.py --ud DIR [--n 400]`
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from curator.config import PiiConfig
from curator.steps.pii import PiiScrub

LANGS = ("es", "de", "fr", "it", "nl", "pl", "pt")
MODES = ("ner", "tagger", "patterns")


def sentences(path: Path, n: int) -> list[tuple[str, set[str]]]:
    """The first `n` sentences of a CoNLL-U file: (text, its PROPN word forms)."""
    out: list[tuple[str, set[str]]] = []
    text, propn = None, set()
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("# text = "):
            text = line[len("# text = ") :]
        elif not line.strip():
            if text:
                out.append((text, propn))
            text, propn = None, set()
            if len(out) >= n:
                break
        elif not line.startswith("#"):
            cols = line.split("\t")
            if len(cols) > 3 and cols[0].isdigit() and cols[3] == "PROPN":
                propn.add(cols[1])
    return out


def judge(text: str, propn: set[str], start: int, end: int) -> bool:
    """Whether a PERSON span holds a word UD tags as a proper noun."""
    return any(w.strip(".,;:()'\"«»") in propn for w in text[start:end].split())


def main() -> None:
    """Score each mode on each language present under --ud; print a table and save the JSON."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ud", type=Path, required=True, help="directory of <lang>.conllu files")
    ap.add_argument("--n", type=int, default=400, help="sentences per language")
    ap.add_argument("--json", type=Path, default=Path(__file__).parent / "results" / "pii_multilingual.json")
    args = ap.parse_args()
    present = [lang for lang in LANGS if (args.ud / f"{lang}.conllu").is_file()]
    if not present:
        sys.exit(f"no <lang>.conllu under {args.ud} (expected some of {', '.join(LANGS)}); see the docstring")
    scrub = PiiScrub(PiiConfig())
    scrub.analyze_texts(["warm up: Anna Smith lives at 12 Main Street"])
    results: dict[str, Any] = {}
    for lang in present:
        items = sentences(args.ud / f"{lang}.conllu", args.n)
        texts = [t for t, _ in items]
        chars = sum(map(len, texts))
        row: dict[str, Any] = {"sentences": len(items), "chars": chars}
        for mode in MODES:
            scrub._cache.clear()
            t0 = time.perf_counter()
            found = scrub.analyze_texts(texts, [mode] * len(texts))
            seconds = time.perf_counter() - t0
            people = [(i, s) for i, spans in enumerate(found) for s in spans if s.type == "PERSON"]
            wrong = [texts[i][s.start : s.end] for i, s in people if not judge(texts[i], items[i][1], s.start, s.end)]
            row[mode] = {
                "entities_per_1k_chars": round(1000 * sum(map(len, found)) / chars, 2),
                "person_not_propn_per_1k_chars": round(1000 * len(wrong) / chars, 2),
                "person_on_propn": len(people) - len(wrong),
                "seconds": round(seconds, 1),
                "person_not_propn_examples": wrong[:15],
            }
        results[lang] = row
    console = Console()
    table = Table(title=f"PII on real {args.n}-sentence UD samples (no planted PII)")
    for col in ("language", "chars", *(f"{m}: ents/1k, PERSON not PROPN/1k, PERSON on PROPN, s" for m in MODES)):
        table.add_column(col)
    for lang, row in results.items():
        cells = [
            f"{row[m]['entities_per_1k_chars']}, {row[m]['person_not_propn_per_1k_chars']}, "
            f"{row[m]['person_on_propn']}, {row[m]['seconds']}"
            for m in MODES
        ]
        table.add_row(lang, str(row["chars"]), *cells)
    console.print(table)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=1, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
