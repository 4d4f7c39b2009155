"""Normalize text in place: repair mojibake (ftfy), line endings, control and invisible characters.

Only the text changes; the record id (derived from the raw content at ingest) does not, so a record
stays traceable to its source line. Code indentation and inner whitespace are kept on purpose: they
are content for code answers.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Any

import ftfy
import polars as pl

from curator.steps.base import Rule

# C0/C1 controls except \t and \n, plus zero-width and bidi-control characters that only hide text.
_INVISIBLE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2060-\u2064\ufeff]")
_FTFY_CONFIG = ftfy.TextFixerConfig(normalization="NFC", unescape_html=False, explain=False)


def normalize_text(text: str) -> str:
    """Repair one text: ftfy only when non-ASCII (the fast path keeps ASCII untouched), then clean."""
    if not text.isascii():
        text = ftfy.fix_text(text, _FTFY_CONFIG)
        text = unicodedata.normalize("NFC", text)
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = _INVISIBLE.sub("", text)
    return text.strip()


def _normalize_message(m: dict[str, Any]) -> dict[str, Any]:
    out = dict(m)
    out["content"] = normalize_text(m["content"] or "")
    return out


class Normalize:
    """MapStep: rewrite every turn's content and the context with `normalize_text`."""

    name = "normalize"
    only_kept = False

    def __call__(self, batch: pl.DataFrame) -> pl.DataFrame:
        messages = [[_normalize_message(m) for m in msgs] for msgs in batch["messages"].to_list()]
        context = [normalize_text(c) if c else c for c in batch["context"].to_list()]
        return batch.with_columns(
            pl.Series("messages", messages, dtype=batch.schema["messages"]),
            pl.Series("context", context, dtype=pl.String),
        )

    def rules(self) -> list[Rule]:
        return []
