"""Text views of a record and the normalisation/shingling every text step shares.

This module is the ONE place that says what "the prompt", "the answer" and "the conversation" of a
canonical record are, as Polars expressions over a batch, so dedup, decontamination, PII and
packing all look at the same text:

- `conversation`: context, then every turn's content and tool-call arguments (as `record_text`);
- `prompt`: context, then the user turns (what the model is asked; system prompts are excluded
  because they are shared boilerplate that would make every record of a source look alike);
- `answer`: the assistant turns' content and tool-call arguments.

Shingling (`shingle_hashes`) is the hot path of MinHash and decontamination: Polars splits the texts
into units, each distinct unit is hashed once with blake2b, and NumPy mixes n-unit chains for all
positions of a batch at once. The hashes are stable across runs, machines and library versions
(Polars' own string hash is not, so it is not used for anything that leaves a process).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Literal

import numpy as np
import polars as pl

View = Literal["conversation", "prompt", "answer"]
Shingle = Literal["word", "char"]

ONE_MB = 1024 * 1024
# Scripts written without spaces: each character is a word, so word shingles still work on them.
_NO_SPACE_SCRIPTS = r"\p{Han}\p{Hiragana}\p{Katakana}\p{Thai}\p{Lao}\p{Khmer}\p{Myanmar}"
_WORD_PATTERN = rf"[{_NO_SPACE_SCRIPTS}]|[^\s{_NO_SPACE_SCRIPTS}]+"


def _turn_text(msg: pl.Expr) -> pl.Expr:
    """One message as text: its content, then the arguments of its tool calls."""
    args = msg.struct.field("tool_calls").list.eval(pl.element().struct.field("arguments")).list.join("\n")
    return pl.concat_str([msg.struct.field("content"), args], separator="\n", ignore_nulls=True)


def view_expr(view: View) -> pl.Expr:
    """The text of one side of each record (`conversation`, `prompt` or `answer`) as a String column."""
    msgs = pl.col("messages")
    if view == "conversation":
        turns = msgs.list.eval(_turn_text(pl.element())).list.join("\n")
        parts = [pl.col("context"), turns]
    elif view == "prompt":
        user = pl.element().filter(pl.element().struct.field("role") == "user")
        parts = [pl.col("context"), msgs.list.eval(user.struct.field("content")).list.join("\n")]
    elif view == "answer":
        asst = pl.element().filter(pl.element().struct.field("role") == "assistant")
        parts = [msgs.list.eval(_turn_text(asst)).list.join("\n")]
    else:
        raise ValueError(f"unknown text view {view!r}; use 'conversation', 'prompt' or 'answer'")
    joined = pl.concat_str([p.fill_null("") for p in parts], separator="\n")
    return joined.str.strip_chars("\n").fill_null("").alias(f"{view}_text")


def normalize_expr(
    text: pl.Expr,
    *,
    lowercase: bool = True,
    collapse_whitespace: bool = True,
    strip_punctuation: bool = False,
) -> pl.Expr:
    """NFKC-normalise, then optionally lowercase, drop punctuation and collapse whitespace."""
    out = text.str.normalize("NFKC")
    if lowercase:
        out = out.str.to_lowercase()
    if strip_punctuation:
        out = out.str.replace_all(r"\p{P}+", " ")
    if collapse_whitespace:
        out = out.str.replace_all(r"\s+", " ").str.strip_chars()
    return out


def input_class_expr(text: pl.Expr) -> pl.Expr:
    """Classify inputs that need care: empty, whitespace, symbols_only (emoji), single_token,
    oversize (> 1 MB), non_latin, else ok. Reports count these; steps decide with them."""
    stripped = text.str.strip_chars()
    has_word = text.str.contains(r"[\p{L}\p{N}]")
    return (
        pl.when(text.str.len_bytes() == 0)
        .then(pl.lit("empty"))
        .when(stripped.str.len_bytes() == 0)
        .then(pl.lit("whitespace"))
        .when(~has_word)
        .then(pl.lit("symbols_only"))
        .when(text.str.len_bytes() > ONE_MB)
        .then(pl.lit("oversize"))
        .when(stripped.str.count_matches(_WORD_PATTERN) == 1)
        .then(pl.lit("single_token"))
        .when(~text.str.contains(r"\p{Latin}"))
        .then(pl.lit("non_latin"))
        .otherwise(pl.lit("ok"))
    )


# Units of word shingles when punctuation is dropped: the same words as replacing every run of
# punctuation with a space first, without rewriting the text.
_WORD_NO_PUNCT_PATTERN = rf"[{_NO_SPACE_SCRIPTS}]|[^\s\p{{P}}{_NO_SPACE_SCRIPTS}]+"
_FMIX64_M1 = np.uint64(0xFF51AFD7ED558CCD)
_FMIX64_M2 = np.uint64(0xC4CEB9FE1A85EC53)
_GOLDEN64 = 0x9E3779B97F4A7C15
_MASK64 = (1 << 64) - 1


def fmix64(h: np.ndarray) -> np.ndarray:
    """MurmurHash3's 64-bit finalizer (an avalanching bijection) on a uint64 array; wraps mod 2^64."""
    s = np.uint64(33)
    with np.errstate(over="ignore"):
        h = h ^ (h >> s)
        h = h * _FMIX64_M1
        h = h ^ (h >> s)
        h = h * _FMIX64_M2
        return h ^ (h >> s)


def unit_hash(unit: str) -> int:
    """Stable 64-bit hash of one word or character: blake2b-64 of its UTF-8 bytes (little-endian)."""
    return int.from_bytes(hashlib.blake2b(unit.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "little")


def _seed_state(seed: int) -> np.ndarray:
    return fmix64(np.array([(seed ^ _GOLDEN64) & _MASK64], dtype=np.uint64))


def shingle_hash(units: Sequence[str], seed: int = 0) -> int:
    """Stable 64-bit hash of one shingle given as its units (words or characters).

    acc = fmix64(seed'); for each unit: acc = fmix64(acc ^ unit_hash(unit)). This is the readable
    reference; `shingle_hashes` computes exactly the same values for a whole batch in NumPy.
    """
    acc = _seed_state(seed)
    for u in units:
        acc = fmix64(acc ^ np.uint64(unit_hash(u)))
    return int(acc[0])


def text_units(texts: pl.Series, kind: Shingle = "word", *, strip_punctuation: bool = False) -> pl.Series:
    """Each text as its list of shingle units: words (a CJK/Thai character is a word) or characters."""
    if kind == "word":
        return texts.fill_null("").str.extract_all(_WORD_NO_PUNCT_PATTERN if strip_punctuation else _WORD_PATTERN)
    return texts.fill_null("").str.split("")


def shingle_hashes(
    texts: pl.Series, *, kind: Shingle = "word", n: int = 3, seed: int = 0, strip_punctuation: bool = False
) -> pl.DataFrame:
    """Hashed shingles per text, in text order: `idx` (position in `texts`, u32) and `h` (u64); may repeat.

    Shingles are n consecutive units (`text_units`); a text shorter than n units gives one shingle
    (all of it), so a short text still matches its copies; a text without units gives none.
    Hashes are stable across runs, machines and library versions (`shingle_hash` is the definition):
    each distinct unit of the batch is hashed once with blake2b (the vocabulary is small, so this
    Python loop is cheap), then the n-unit chain is mixed with vectorised `fmix64` over all
    positions at once. Hand-written because no library hashes n-grams of a ragged batch stably.
    """
    units = pl.DataFrame({"u": text_units(texts, kind, strip_punctuation=strip_punctuation)})
    flat = units.with_row_index("idx").explode("u").filter(pl.col("u").str.len_bytes() > 0)
    doc = flat["idx"].to_numpy()
    vocab = flat["u"].unique()
    vocab_h = pl.Series([unit_hash(u) for u in vocab], dtype=pl.UInt64)
    w = flat["u"].replace_strict(vocab, vocab_h, return_dtype=pl.UInt64).to_numpy()
    counts = np.bincount(doc, minlength=len(texts)).astype(np.int64)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    pos = np.arange(len(w), dtype=np.int64) - starts[doc]
    acc = np.full(len(w), _seed_state(seed)[0], dtype=np.uint64)
    short = np.flatnonzero((counts > 0) & (counts < n))
    short_h = np.zeros(len(short), dtype=np.uint64)
    for k in range(n):
        shifted = np.concatenate([w[k:], np.zeros(min(k, len(w)), dtype=np.uint64)])
        acc = fmix64(acc ^ shifted)
        ends_here = counts[short] == k + 1  # texts of k+1 < n units: their one shingle ends here
        short_h[ends_here] = acc[starts[short[ends_here]]]
    acc[starts[short]] = short_h
    keep = (pos + n <= counts[doc]) | ((pos == 0) & (counts[doc] < n))
    return pl.DataFrame({"idx": doc[keep], "h": acc[keep]}, schema={"idx": pl.UInt32, "h": pl.UInt64})
