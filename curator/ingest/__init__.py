"""Ingest: every supported source format -> canonical records (or quarantine rows), streamed.

Public API for the pipeline: `FORMATS`, `detect_format(path)`, `read_input(path, display, fmt, opts)`.
Layers: a source (JSON/JSONL/zip/CSV/Parquet/HF dataset) yields positioned objects; one per-row
converter per row shape turns each into records, so the same shape in any container goes through
the same code.
"""

from __future__ import annotations

import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

from curator.ingest.archive import open_member
from curator.ingest.base import Quarantined, ReaderOptions, UnreadableInput
from curator.ingest.chatgpt import convert_chatgpt
from curator.ingest.chats import CHAT_FORMATS, MessageTally, detect_chat, read_chat
from curator.ingest.claude import convert_claude
from curator.ingest.convert import (
    PROMPT_KEYS,
    RESPONSE_KEYS,
    Converter,
    RowError,
    convert_messages,
    convert_pair,
    convert_sharegpt,
)
from curator.ingest.oasst import convert_oasst
from curator.ingest.sources import Item, first_bytes, iter_json_items, looks_utf16
from curator.ingest.tabular import csv_like, is_parquet, iter_csv, iter_hf_dataset, iter_parquet
from curator.record import Record, Source

__all__ = [
    "FORMATS",
    "MessageTally",
    "Quarantined",
    "ReaderOptions",
    "UnreadableInput",
    "convert_row",
    "detect_format",
    "read_input",
    "row_format",
]

CONVERTERS: dict[str, Converter] = {
    "chatgpt": convert_chatgpt,
    "claude": convert_claude,
    "sharegpt": convert_sharegpt,
    "openai": convert_messages,
    "oasst": convert_oasst,
    "alpaca": convert_pair,
    "dolly": convert_pair,
}
FORMATS: tuple[str, ...] = (*CONVERTERS, "generic", "hf_dataset")
CANONICAL_COLUMNS = ("prompt", "response", "system", "context", "category", "messages", "conversations")
JSONL_SUFFIXES = (".jsonl", ".ndjson")
ZIP_MAGIC = b"PK\x03\x04"
SNIFF_ITEMS = 20

# --- chat exports (issue 14, curator/ingest/chats/): Slack, Discord, Telegram, WhatsApp, Messenger ---
# Recognised by their documented structure (keys, file layout, WhatsApp's line pattern) before the
# generic rules below, which would read any JSON with a top-level `messages` as OpenAI format.
FORMATS = (*FORMATS, *CHAT_FORMATS)


def row_format(row: Any) -> str | None:
    """The format whose row shape `row` has (by its keys), or None when no shape fits."""
    if not isinstance(row, dict):
        return None
    if "mapping" in row and ("current_node" in row or "conversation_id" in row or "title" in row):
        return "chatgpt"
    if "chat_messages" in row:
        return "claude"
    if isinstance(row.get("prompt"), dict) and ("message_tree_id" in row or "replies" in row["prompt"]):
        return "oasst"
    if "messages" in row:
        return "openai"
    if "conversations" in row:
        return "sharegpt"
    has_prompt = any(k in row for k in PROMPT_KEYS)
    if has_prompt and "instruction" in row and ("context" in row or "response" in row):
        return "dolly"
    if has_prompt and ("instances" in row or any(k in row for k in RESPONSE_KEYS)):
        return "alpaca"
    return None


def apply_column_map(row: Any, column_map: dict[str, str]) -> Any:
    """`row` with its columns renamed to canonical names (prompt, response, ...) per `column_map`."""
    if not column_map or not isinstance(row, dict):
        return row
    out = {}
    for canonical, column in column_map.items():
        if column not in row:
            raise RowError(
                f"column {column!r} (mapped to {canonical}) is missing; columns are {sorted(map(str, row))[:20]}",
                column,
            )
        out[canonical] = row[column]
    return out


class ShapeError(RowError):
    """A generic row that matches no known shape (on the first row: the input needs a column_map)."""


def convert_row(row: Any, src: Source, opts: ReaderOptions, fmt: str) -> list[Record]:
    """Records of one row in format `fmt`; `generic`/`hf_dataset` rows are mapped, then shape-detected."""
    if fmt in CONVERTERS:
        return CONVERTERS[fmt](row, src, opts)
    row = apply_column_map(row, opts.column_map)
    shape = row_format(row)
    if shape is None:
        keys = sorted(map(str, row))[:20] if isinstance(row, dict) else type(row).__name__
        raise ShapeError(f"no known row shape in {keys}; set column_map with any of {'/'.join(CANONICAL_COLUMNS)}")
    return CONVERTERS[shape](row, src, opts)


def _open_stream(path: Path, display: str, opts: ReaderOptions) -> tuple[Any, str]:
    """A buffered binary stream of the JSON content (a zip's conversations.json) and its display name."""
    with open(path, "rb") as fh:
        magic = fh.read(4)
    if magic == ZIP_MAGIC:
        return open_member(path, display, opts.max_archive_bytes, opts.max_compression_ratio)
    stream = open(path, "rb", buffering=256 * 1024)  # noqa: SIM115 - closed by the caller's generator
    if looks_utf16(first_bytes(stream)):
        stream.close()
        raise UnreadableInput(f"{display}: the file is UTF-16/32 encoded; re-encode it as UTF-8")
    return stream, display


def _items(path: Path, display: str, fmt: str, opts: ReaderOptions) -> Iterator[tuple[str, Item | Quarantined]]:
    """(display, item) for every top-level object of the input, whatever its container."""
    if fmt == "hf_dataset" or path.is_dir():
        if not path.is_dir():
            raise UnreadableInput(f"{display}: format hf_dataset needs a directory written by save_to_disk")
        yield from iter_hf_dataset(path, display, opts)
        return
    if is_parquet(path):
        yield from ((display, it) for it in iter_parquet(path, display, opts))
        return
    if csv_like(path):
        yield from ((display, it) for it in iter_csv(path, display, opts))
        return
    stream, shown = _open_stream(path, display, opts)
    jsonl = True if path.suffix.lower() in JSONL_SUFFIXES else None
    try:
        for item in iter_json_items(stream, shown, opts, jsonl=jsonl):
            yield shown, item
    except (zipfile.BadZipFile, zlib.error, EOFError) as exc:
        raise UnreadableInput(f"{shown}: the archive member is corrupt ({exc}); re-download the export") from exc
    finally:
        stream.close()


def _excerpt(obj: Any) -> bytes:
    """The start of a row as JSON, for the quarantine excerpt."""
    return orjson.dumps(obj, default=str, option=orjson.OPT_NON_STR_KEYS)[:800]


def _check_path(path: Path, display: str) -> None:
    if not path.exists():
        raise UnreadableInput(f"{display}: no such file or directory; check the input path")
    if path.is_file() and path.stat().st_size == 0:
        raise UnreadableInput(f"{display}: the file is empty")


def detect_format(path: Path) -> str:
    """The reader for `path`, from its content (keys of the first objects), not only its extension."""
    path = Path(path)
    _check_path(path, str(path))
    chat = detect_chat(path)  # chat exports first (see CHAT_FORMATS above)
    if chat is not None:
        return chat
    if path.is_dir():
        if any((path / n).exists() for n in ("state.json", "dataset_info.json", "dataset_dict.json")):
            return "hf_dataset"
        raise UnreadableInput(f"{path}: a directory, but not a Hugging Face dataset saved with save_to_disk")
    if is_parquet(path) or csv_like(path):
        return "generic"
    opts = ReaderOptions()
    seen: list[str] = []
    for n, (_, item) in enumerate(_items(path, str(path), "generic", opts)):
        if isinstance(item, Item):
            fmt = row_format(item.obj)
            if fmt is not None:
                return fmt
            seen.append(str(sorted(item.obj)[:12]) if isinstance(item.obj, dict) else type(item.obj).__name__)
        if n + 1 >= SNIFF_ITEMS:
            break
    what = f"the first records look like {seen[0]}" if seen else "no readable record was found"
    raise UnreadableInput(
        f"{path}: cannot tell the format ({what}). Pass `format:` (one of {', '.join(FORMATS)}); "
        "for other columns use format: generic with column_map"
    )


def read_input(
    path: Path, display: str, fmt: str | None, opts: ReaderOptions
) -> Iterator[Record | Quarantined | MessageTally]:
    """Stream the records of one input (or quarantine rows); `display` goes into `source.file`.

    A chat export also yields, last, one `MessageTally`: its message accounting (not a record)."""
    path = Path(path)
    _check_path(path, display)
    fmt = fmt or detect_format(path)
    if fmt not in FORMATS:
        raise UnreadableInput(f"{display}: unknown format {fmt!r}; use one of {', '.join(FORMATS)}")
    if fmt in CHAT_FORMATS:
        yield from read_chat(path, display, fmt, opts)
        return
    checked = False
    for shown, item in _items(path, display, fmt, opts):
        if isinstance(item, Quarantined):
            yield item
            continue
        src: Source = {"file": shown, "index": item.index, "line": item.line, "format": fmt}
        try:
            records = convert_row(item.obj, src, opts, fmt)
        except RowError as exc:
            if not checked and isinstance(exc, ShapeError):
                raise UnreadableInput(f"{shown}: {exc.reason}") from exc
            actual = row_format(item.obj)
            if not checked and fmt in CONVERTERS and actual is not None and actual != fmt \
                    and CONVERTERS[actual] is not CONVERTERS[fmt]:
                raise UnreadableInput(
                    f"{display}: format {fmt!r} was asked, but the first record looks like {actual!r}; "
                    f"set format: {actual} or leave it out to auto-detect"
                ) from exc
            yield Quarantined.of(shown, exc.reason, index=item.index, line=item.line, field=exc.field,
                                 raw=_excerpt(item.obj))
        except (TypeError, ValueError, AttributeError, KeyError) as exc:
            # A shape no check anticipated: still one quarantine row, never a crashed run.
            reason = f"record {item.index}: unexpected structure ({type(exc).__name__}: {exc})"
            yield Quarantined.of(shown, reason, index=item.index, line=item.line, raw=_excerpt(item.obj))
        else:
            yield from records
        checked = True
