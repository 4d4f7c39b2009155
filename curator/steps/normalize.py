"""Normalize text in place: repair mojibake (ftfy), line endings, control and invisible characters.

Only the text changes; the record id (derived from the raw content at ingest) does not, so a record
stays traceable to its source line. Code indentation and inner whitespace are kept on purpose: they
are content for code answers. The cleanup is vectorized in Polars; ftfy (Python, per string) runs
only on the turns that contain Latin-1-range characters, where UTF-8-read-as-cp1252 mojibake lives.
"""

from __future__ import annotations

import ftfy
import polars as pl

from curator.steps.base import Rule

# C0 controls except \t and \n (NUL, escape...) and DEL: exports use them as separators ("simple\x00recipe"),
# so a run of them between two visible characters becomes one space; next to whitespace it just goes.
CONTROL = r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]"
# C1 controls, zero-width and bidi-control characters only hide text: removed.
INVISIBLE = r"[\x80-\x9f\x{200b}-\x{200f}\x{202a}-\x{202e}\x{2060}-\x{2064}\x{feff}]"
# UTF-8 read as cp1252/latin-1 turns every multi-byte character into a lead byte shown as Â..ô followed by
# continuation bytes shown as C1 controls, Latin-1 symbols or cp1252's punctuation ("Ã©", "â€™", "Ã¼").
# Only text with such a pair goes through ftfy: "café" or "Müller" alone never does.
_CP1252_CONTINUATION = (
    r"\x{80}-\x{bf}\x{152}\x{153}\x{160}\x{161}\x{178}\x{17d}\x{17e}\x{192}\x{2c6}\x{2dc}"
    r"\x{2013}\x{2014}\x{2018}-\x{201e}\x{2020}-\x{2022}\x{2026}\x{2030}\x{2039}\x{203a}\x{20ac}\x{2122}"
)
MOJIBAKE_HINT = rf"[\x{{c2}}-\x{{f4}}][{_CP1252_CONTINUATION}]|\x{{fffd}}"
# Only encoding repair: quotes, ligatures and widths are content, left as the author wrote them.
_FTFY_CONFIG = ftfy.TextFixerConfig(
    unescape_html=False,
    uncurl_quotes=False,
    fix_latin_ligatures=False,
    fix_character_width=False,
    fix_line_breaks=False,
    normalization="NFC",
    explain=False,
)


def clean_expr(text: pl.Expr) -> pl.Expr:
    """NFC, LF line endings, control characters as word separators, no invisible characters, no
    surrounding whitespace. (Polars' regex has no lookaround: controls beside whitespace go first.)"""
    return (
        text.str.normalize("NFC")
        .str.replace_all("\r\n?", "\n")
        .str.replace_all(rf"(\s){CONTROL}+|{CONTROL}+(\s)", "${1}${2}")
        .str.replace_all(f"{CONTROL}+", " ")
        .str.replace_all(INVISIBLE, "")
        .str.strip_chars()
    )


def normalize_text(text: str) -> str:
    """The whole normalization for one string (ftfy, then `clean_expr`): for callers outside a batch."""
    fixed = ftfy.fix_text(text, _FTFY_CONFIG) if not text.isascii() else text
    return pl.select(clean_expr(pl.lit(fixed))).item()


def _fix_encoding(messages: pl.Series) -> pl.Series:
    """Run ftfy on the records whose turns contain mojibake-range characters; others pass untouched."""
    hint = messages.list.eval(pl.element().struct.field("content").str.contains(MOJIBAKE_HINT)).list.any()
    idx = hint.fill_null(False).arg_true()
    if idx.len() == 0:
        return messages
    fixed = [
        [{**m, "content": ftfy.fix_text(m["content"] or "", _FTFY_CONFIG)} for m in msgs]
        for msgs in messages.gather(idx).to_list()
    ]
    # Series.scatter does not take nested types: put the fixed rows back with a positional join.
    patch = pl.DataFrame({"_i": idx.cast(pl.UInt32), "_fixed": pl.Series(fixed, dtype=messages.dtype)})
    joined = messages.to_frame().with_row_index("_i").join(patch, on="_i", how="left", maintain_order="left")
    return joined.select(pl.coalesce("_fixed", messages.name).alias(messages.name)).to_series()


_ROLE = pl.element().struct.field("role")


def trim_leading_turns(messages: pl.Expr) -> pl.Expr:
    """`messages` without the turns before the first user turn (system turns stay), when there is one.

    A conversation split into parts (ShareGPT `id_1`, `id_2`...) often starts a part with the
    assistant answering a question of the previous part: trained on as is, the answer has no
    question. FastChat's trainer drops such leading turns the same way.
    """
    kept = messages.list.eval(pl.element().filter(((_ROLE == "user").cum_sum() > 0) | (_ROLE == "system")))
    has_user = messages.list.eval(_ROLE == "user").list.any().fill_null(False)
    return pl.when(has_user).then(kept).otherwise(messages)


class Normalize:
    """MapStep: rewrite every turn's content and the context with ftfy + `clean_expr`; trim the turns
    before the first user turn (`trim_leading_turns`), counted in `trimmed_turns`."""

    name = "normalize"
    only_kept = False

    def __call__(self, batch: pl.DataFrame) -> pl.DataFrame:
        context = batch["context"]
        ctx_idx = context.str.contains(MOJIBAKE_HINT).fill_null(False).arg_true()
        if ctx_idx.len():
            fixed = [ftfy.fix_text(c, _FTFY_CONFIG) for c in context.gather(ctx_idx).to_list()]
            context = context.scatter(ctx_idx, pl.Series(fixed, dtype=pl.String))
        before = batch["messages"].list.len()
        out = batch.with_columns(_fix_encoding(batch["messages"]), context).with_columns(
            trim_leading_turns(pl.col("messages")).list.eval(
                pl.element().struct.with_fields(clean_expr(pl.field("content").fill_null("")))
            ),
            clean_expr(pl.col("context")),
        )
        return out.with_columns((before - out["messages"].list.len()).cast(pl.Int32).alias("trimmed_turns"))

    def rules(self) -> list[Rule]:
        return []
