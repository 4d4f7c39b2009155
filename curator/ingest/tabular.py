"""Row sources for tables: CSV (streamed with the csv module), Parquet (pyarrow batches), HF datasets.

Each yields `Item`s of plain dict rows, so the same per-row converters as for JSON apply.
CSV encoding choice: the file is read as UTF-8 (a BOM is stripped); a row with bytes that are not
UTF-8 (typically a cp1252/latin-1 export) is quarantined with its line and column and a hint to
re-encode, instead of guessing an encoding and silently changing characters.
CSV quoting: only the delimiter is guessed (`_delimiter`); quoting is strict RFC 4180, parsed line by line, so a
stray quote costs its own line (quarantined with the line number), not the rows after it; a first
row that reads like data is read as data (a `Note` says so). Parquet: read one row group at a time,
and a corrupt group is counted row by row in the quarantine.
"""

from __future__ import annotations

import csv
import io
import itertools
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from curator.ingest.base import Note, Quarantined, ReaderOptions, UnreadableInput
from curator.ingest.sources import Item, oversize_reason

PARQUET_BATCH = 2048
CSV_DELIMITERS = (",", "\t", ";", "|")
MAX_HEADER_NAME = 64  # characters: a longer first-row value is data, not a column name


def _invalid_column(row: dict[str, Any]) -> str | None:
    """The first column whose value holds undecodable bytes (surrogate escapes), or None."""
    for key, value in row.items():
        if isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                return str(key)
    return None


class _Lines:
    """The physical lines of a text file for `csv.reader`, numbered, with lines that can be read again.

    `taken` holds the lines of the record being parsed (csv.reader pulls one line at a time and
    never reads ahead), so a record's line span and raw text are known, and after a stray quote
    the lines it swallowed are pushed back and parsed again as rows of their own.
    """

    def __init__(self, fh: Any) -> None:
        self._it = iter(fh)
        self.no = 0
        self.taken: list[tuple[int, str]] = []
        self._back: list[tuple[int, str]] = []

    def __iter__(self) -> _Lines:
        return self

    def __next__(self) -> str:
        if self._back:
            item = self._back.pop()
        else:
            item = (self.no + 1, next(self._it))
            self.no += 1
        self.taken.append(item)
        return item[1]

    def take(self) -> list[tuple[int, str]]:
        """The lines of the record just parsed (and start the next one)."""
        taken, self.taken = self.taken, []
        return taken

    def push_back(self, lines: list[tuple[int, str]]) -> None:
        """Read these lines again, in order, before the rest of the file."""
        self._back.extend(reversed(lines))


def _looks_like_data(header: list[str], column_map: dict[str, str]) -> str | None:
    """Why a first row is data rather than a header, or None.

    Data: the column_map names positional columns (`column_2`) that the row does not hold, or a
    value is a number, repeats another, is long, or reads like a sentence (ends in ?/./! with spaces,
    or has more than six words). MMLU-style files have no header: read as one, their first item is lost.
    """
    seen: set[str] = set()
    for name in header:
        value = name.strip()
        if not value:
            continue
        try:
            float(value)
        except ValueError:
            pass
        else:
            return f"holds a number ({value[:20]!r})"
        if value in seen:
            return f"repeats the value {value[:40]!r}"
        if len(value) > MAX_HEADER_NAME or "\n" in value:
            return f"holds a {len(value)}-character value"
        words = len(value.split())
        if words > 6 or (words > 1 and value[-1] in "?.!"):
            return f"holds a sentence ({value[:40]!r})"
        seen.add(value)
    positional = [c for c in column_map.values() if re.fullmatch(r"column_\d+", c)]
    if positional and not set(positional) & set(header):
        return f"is taken as data: column_map names positional columns ({positional[0]}...)"
    return None


def _delimiter(head: str, default: str) -> str:
    """The delimiter that splits the first rows of `head` into the same number (> 1) of fields, most fields
    first; `default` (from the suffix) on a tie or when none does.

    Not csv.Sniffer: on text-heavy rows it picks ';' or '|' from the prose (the fuzz suite found a
    two-row file it misread), and its quoting guesses (no doublequote, skipinitialspace) change data.
    """
    sample = head[: head.rfind("\n") + 1] or head  # whole lines only
    best, best_score = default, (False, 1)
    for candidate in (default, *(d for d in CSV_DELIMITERS if d != default)):
        try:
            rows = list(itertools.islice(csv.reader(io.StringIO(sample, newline=""), delimiter=candidate), 5))
        except csv.Error:
            continue
        counts = {len(r) for r in rows if r}
        score = (len(counts) == 1, max(counts, default=1))
        if score[1] > 1 and score > best_score:
            best, best_score = candidate, score
    return best


def _raw(lines: list[tuple[int, str]]) -> bytes:
    return "".join(text for _, text in lines).encode("utf-8", "surrogateescape")


def _span(lines: list[tuple[int, str]]) -> str:
    first, last = lines[0][0], lines[-1][0]
    return f"line {first}" if first == last else f"lines {first}-{last}"


def iter_csv(path: Path, display: str, opts: ReaderOptions) -> Iterator[Item | Quarantined | Note]:
    """Rows of a CSV/TSV file as dicts keyed by the header; the delimiter is sniffed from the start.

    Parsed with `strict` quoting, line by line: a quote that is opened and not closed on its line
    would otherwise merge the following rows into one field silently. Such a line is quarantined
    with its number and the lines after it are parsed again, so every physical row is accounted for.
    A first row that looks like data (`_looks_like_data`) is read as data, columns named column_1...
    """
    csv.field_size_limit(min(sys.maxsize, opts.max_record_bytes))
    with open(path, encoding="utf-8-sig", errors="surrogateescape", newline="") as fh:
        head = fh.read(64 * 1024)
        fh.seek(0)
        delimiter = _delimiter(head, "\t" if path.suffix.lower() == ".tsv" else ",")
        lines = _Lines(fh)

        def parser() -> Any:
            # Only the delimiter is sniffed; the rest is RFC 4180 ("" escapes a quote, spaces are data)
            # whatever the sniffer guessed, and strict, so a stray quote is an error on its line
            # rather than a silent merge of the rows after it.
            return csv.reader(lines, delimiter=delimiter, quotechar='"', doublequote=True, strict=True)

        reader = parser()
        try:
            header = next(reader)
            while not header:  # blank lines before the header
                lines.take()
                header = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise UnreadableInput(f"{display}: {_span(lines.take())}: the header row cannot be parsed ({exc})") from exc
        header_lines = lines.take()
        why = _looks_like_data(header, opts.column_map)
        if why is not None:
            names = [f"column_{i + 1}" for i in range(len(header))]
            lines.push_back(header_lines)
            yield Note(display, f"no header row: line 1 {why}, so it is read as data and the columns are named "
                                f"{names[0]}..{names[-1]} (use them in column_map)")
        else:
            names = header
        index = 0
        while True:
            try:
                fields = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                taken = lines.take()
                if "field larger than field limit" in str(exc):
                    reason = f"{_span(taken)}: " + oversize_reason(index, opts.max_record_bytes + 1,
                                                                   opts.max_record_bytes)
                elif len(taken) > 1:
                    reason = _stray_quote(taken)
                    lines.push_back(taken[1:])
                    taken = taken[:1]
                else:
                    reason = f"{_span(taken)}: {exc} (a stray quote?)"
                yield Quarantined.of(display, reason, index=index, line=taken[0][0], raw=_raw(taken))
                reader = parser()
                index += 1
                continue
            taken = lines.take()
            line = taken[0][0]
            if not fields:  # a blank line
                continue
            if len(fields) != len(names) and len(taken) > 1:  # a quote swallowed line breaks
                lines.push_back(taken[1:])
                yield Quarantined.of(display, _stray_quote(taken), index=index, line=line, raw=_raw(taken[:1]))
                reader = parser()
            elif len(fields) > len(names):
                yield Quarantined.of(display, f"line {line}: {len(fields)} fields, more than the header's "
                                              f"{len(names)}", index=index, line=line, raw=_raw(taken))
            else:
                row = dict(zip(names, [*fields, *[None] * (len(names) - len(fields))], strict=True))
                bad = _invalid_column(row)
                if bad is not None:
                    reason = (
                        f"line {line}, column {bad!r}: bytes that are not UTF-8 (a cp1252/latin-1 file?); "
                        "re-encode it, e.g. `iconv -f cp1252 -t utf-8`"
                    )
                    yield Quarantined.of(display, reason, index=index, line=line, field=bad, raw=_raw(taken))
                else:
                    yield Item(index, line, row)
            index += 1


def _stray_quote(taken: list[tuple[int, str]]) -> str:
    """The reason for a line whose quote runs on into the next lines."""
    first, nxt = taken[0][0], taken[1][0]
    return (
        f"line {first}: a quoted field opened on this line runs on to line {taken[-1][0]} (a stray or unclosed "
        f"quote?); this line was skipped and the lines from {nxt} on were read again. Fix the quoting to keep it"
    )


def iter_parquet(path: Path, display: str, opts: ReaderOptions) -> Iterator[Item | Quarantined]:
    """Rows of a Parquet file, read batch by batch (never the whole table), one row group at a time.

    A row group that cannot be read (a corrupt page) becomes one quarantine row per row it holds,
    counted from the footer, and reading goes on with the next group; a file whose footer or first
    rows cannot be read is unreadable as a whole (the pre-check stops the run on it).
    """
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises several types for a corrupt footer
        raise UnreadableInput(f"{display}: not a readable Parquet file ({exc})") from exc
    start = 0
    for group in range(pf.metadata.num_row_groups):
        end = start + pf.metadata.row_group(group).num_rows
        index = start
        try:
            for batch in pf.iter_batches(batch_size=PARQUET_BATCH, row_groups=[group]):
                for row in batch.to_pylist():
                    yield Item(index, None, row)
                    index += 1
        except Exception as exc:  # pyarrow raises OSError/ArrowInvalid/... for a corrupt page
            if index == 0:
                raise UnreadableInput(f"{display}: not a readable Parquet file: its first rows cannot be read "
                                      f"({type(exc).__name__}: {str(exc)[:200]}); re-export it") from exc
            reason = (f"rows {index}-{end - 1} (row group {group}) cannot be read: the file is corrupt there "
                      f"({type(exc).__name__}: {str(exc)[:200]}); re-export it to keep them")
            for lost in range(index, end):
                yield Quarantined.of(display, reason, index=lost)
        start = end


def iter_hf_dataset(path: Path, display: str, opts: ReaderOptions) -> Iterator[tuple[str, Item]]:
    """(display, row) of a `datasets` directory saved with `save_to_disk`; DatasetDict splits in name order."""
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import datasets

    try:
        loaded = datasets.load_from_disk(str(path))
    except Exception as exc:  # datasets raises FileNotFoundError or its own errors for a bad dir
        raise UnreadableInput(f"{display}: cannot load this Hugging Face dataset directory ({exc})") from exc
    splits = [(f"{display}[{name}]", loaded[name]) for name in sorted(loaded)] \
        if isinstance(loaded, datasets.DatasetDict) else [(display, loaded)]
    for name, ds in splits:
        for index, row in enumerate(ds):
            yield name, Item(index, None, row)


def is_parquet(path: Path) -> bool:
    """True when the file starts with the Parquet magic bytes."""
    with open(path, "rb") as fh:
        return fh.read(4) == b"PAR1"


def csv_like(path: Path) -> bool:
    """True for .csv/.tsv files (CSV has no reliable magic, so the extension decides)."""
    return path.suffix.lower() in (".csv", ".tsv")

