"""What the scrubber rewrites in real conversation text: a seeded sample for labelling false positives by hand.

Real exports from `sample_data/` (OpenAssistant, FastChat ShareGPT, LLaMA-Factory messages, glaive
tool calls; licenses in sample_data/SOURCES.md) hold almost no personal data, so nearly every span
found there is a false positive that damages training text. This script scrubs a seeded sample of
turns as `curate` would (prose with NER, fenced and inline code with the code policy) with plain
presidio (spaCy sm, whole text, DATE_TIME/NRP not counted) and with ours, and writes every span with
its context to a TSV (`system, type, value, context`) for a person to mark real PII (`pii` column).
It prints spans per 1,000 characters and the share of turns each system would rewrite.

Run: `.venv/bin/python bench/pii_real_sample.py [--n 200] [--tsv bench/results/pii_real_sample.tsv]`
"""

from __future__ import annotations

import argparse
import csv
import json
import random
from collections import Counter
from pathlib import Path

from bench.pii_bench import presidio_baseline
from curator.config import PiiConfig
from curator.steps.pii import DEFAULT_EXCLUDED, PiiScrub, _Unit

ROOT = Path(__file__).resolve().parents[1]


def real_turns() -> list[str]:
    """Every distinct non-empty turn of the real exports in sample_data/."""
    texts: set[str] = set()
    for line in (ROOT / "sample_data" / "oasst_en_60_trees.jsonl").read_text(encoding="utf-8").splitlines():
        stack = [json.loads(line)["prompt"]]
        while stack:
            node = stack.pop()
            texts.add(node["text"])
            stack.extend(node.get("replies", []))
    for name in ("fastchat_dummy_conversation_sharegpt.json", "glaive_toolcall_100_sharegpt.json"):
        for conv in json.loads((ROOT / "sample_data" / name).read_text(encoding="utf-8")):
            texts.update(t["value"] for t in conv["conversations"] if t["from"] in ("human", "gpt"))
    for line in (
        (ROOT / "sample_data" / "llamafactory_v1_sft_messages_200.jsonl").read_text(encoding="utf-8").splitlines()
    ):
        texts.update(m["content"] for m in json.loads(line)["messages"] if isinstance(m.get("content"), str))
    return sorted(t for t in texts if t.strip())


def main() -> None:
    """Sample, scrub with both systems, write the TSV, print the rates."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tsv", type=Path, default=Path(__file__).parent / "results" / "pii_real_sample.tsv")
    args = ap.parse_args()
    turns = real_turns()
    sample = random.Random(args.seed).sample(turns, min(args.n, len(turns)))
    chars = sum(map(len, sample))
    baseline = presidio_baseline()
    ours = PiiScrub(PiiConfig())
    excluded = set(DEFAULT_EXCLUDED)
    rows = []
    rewritten: Counter[str] = Counter()
    per_type: dict[str, Counter[str]] = {"presidio": Counter(), "curator": Counter()}
    base = baseline.analyze_iterator(sample, language="en", batch_size=64, score_threshold=0.35)
    mine = ours._unit_spans([_Unit("content", t) for t in sample], ner=True)
    for text, theirs, spans in zip(sample, base, mine, strict=True):
        found = {
            "presidio": [(r.entity_type, r.start, r.end) for r in theirs if r.entity_type not in excluded],
            "curator": [(s.type, s.start, s.end) for s in spans],
        }
        for system, items in found.items():
            rewritten[system] += bool(items)
            for etype, start, end in items:
                per_type[system][etype] += 1
                context = text[max(0, start - 40) : end + 40].replace("\n", " ").replace("\t", " ")
                rows.append(
                    {
                        "system": system,
                        "type": etype,
                        "value": text[start:end].replace("\n", " "),
                        "context": context,
                        "pii": "",
                    }
                )
    args.tsv.parent.mkdir(parents=True, exist_ok=True)
    with open(args.tsv, "w", encoding="utf-8", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["system", "type", "value", "context", "pii"], delimiter="\t")
        writer.writeheader()
        writer.writerows(rows)
    print(f"{len(sample)} turns, {chars} characters")
    for system in ("presidio", "curator"):
        total = sum(per_type[system].values())
        print(
            f"{system}: {total} spans ({1000 * total / chars:.2f} per 1,000 chars), "
            f"{rewritten[system]} of {len(sample)} turns rewritten; {dict(per_type[system].most_common())}"
        )


if __name__ == "__main__":
    main()
