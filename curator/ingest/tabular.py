"""Row sources for tables: CSV (streamed with the csv module), Parquet (pyarrow batches), HF datasets.

Each yields `Item`s of plain dict rows, so the same per-row converters as for JSON apply.
CSV encoding choice: the file is read as UTF-8 (a BOM is stripped); a row with bytes that are not
UTF-8 (typically a cp1252/latin-1 export) is quarantined with its line and column and a hint to
re-encode, instead of guessing an encoding and silently changing characters.
"""

from __future__ import annotations

import csv
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from curator.ingest.base import Quarantined, ReaderOptions, UnreadableInput
from curator.ingest.sources import Item, oversize_reason

PARQUET_BATCH = 2048


def _invalid_column(row: dict[str, Any]) -> str | None:
    """The first column whose value holds undecodable bytes (surrogate escapes), or None."""
    for key, value in row.items():
        if isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                return str(key)
    return None


def iter_csv(path: Path, display: str, opts: ReaderOptions) -> Iterator[Item | Quarantined]:
    """Rows of a CSV/TSV file as dicts keyed by the header; the delimiter is sniffed from the start."""
    csv.field_size_limit(min(sys.maxsize, opts.max_record_bytes))
    with open(path, encoding="utf-8-sig", errors="surrogateescape", newline="") as fh:
        head = fh.read(64 * 1024)
        fh.seek(0)
        try:
            dialect: Any = csv.Sniffer().sniff(head, delimiters=",;\t|")
        except csv.Error:
            dialect = csv.excel_tab if path.suffix.lower() == ".tsv" else csv.excel
        reader = csv.DictReader(fh, dialect=dialect)
        index = 0
        start = 2  # line 1 is the header
        while True:
            try:
                row = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                reason = str(exc)
                if "field larger than field limit" in reason:
                    reason = oversize_reason(index, opts.max_record_bytes + 1, opts.max_record_bytes)
                yield Quarantined.of(display, f"line {start}: {reason}", index=index, line=start)
                index += 1
                start = reader.line_num + 1
                continue
            line, start = start, reader.line_num + 1
            bad = _invalid_column(row)
            if bad is not None:
                reason = (
                    f"line {line}, column {bad!r}: bytes that are not UTF-8 (a cp1252/latin-1 file?); "
                    "re-encode it, e.g. `iconv -f cp1252 -t utf-8`"
                )
                raw = "; ".join(str(v) for v in row.values()).encode("utf-8", "replace")
                yield Quarantined.of(display, reason, index=index, line=line, field=bad, raw=raw)
            elif None in row:
                yield Quarantined.of(display, f"line {line}: more fields than the header has", index=index,
                                     line=line)
            else:
                yield Item(index, line, row)
            index += 1


def iter_parquet(path: Path, display: str, opts: ReaderOptions) -> Iterator[Item | Quarantined]:
    """Rows of a Parquet file, read batch by batch (never the whole table)."""
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises several types for a corrupt footer
        raise UnreadableInput(f"{display}: not a readable Parquet file ({exc})") from exc
    index = 0
    for batch in pf.iter_batches(batch_size=PARQUET_BATCH):
        for row in batch.to_pylist():
            yield Item(index, None, row)
            index += 1


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

