"""Streaming object sources: JSON arrays, JSON documents and JSONL as a stream of (index, line, object).

Every reader of a JSON-shaped format sits on `iter_json_items`, so BOMs, invalid UTF-8, truncation and
oversized records are handled once. JSONL is split on b"\\n" only (never `str.splitlines()`), so a raw
U+2028 inside a string stays inside its record; each line is parsed with orjson. JSON arrays and
pretty-printed documents are parsed incrementally with ijson's C backend.
"""

from __future__ import annotations

import codecs
import reprlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO

import ijson
import orjson

from curator.ingest.base import Quarantined, ReaderOptions

BOM = codecs.BOM_UTF8
READ_CHUNK = 64 * 1024
SNIFF_BYTES = 64 * 1024
_JSON = ijson.get_backend("yajl2_c")
_REPLACEMENT = "\ufffd".encode()


@dataclass(frozen=True)
class Item:
    """One parsed top-level object with its position in the input."""

    index: int
    line: int | None
    obj: Any


def human_size(n: int) -> str:
    """Bytes as a short decimal size ('50.0 MB') for messages people read."""
    for unit, scale in (("GB", 10**9), ("MB", 10**6), ("kB", 10**3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def binary_size(n: int) -> str:
    """A limit as the user would write it ('16 MiB')."""
    for unit, scale in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if n >= scale and n % scale == 0:
            return f"{n // scale} {unit}"
    return f"{n} bytes"


def oversize_reason(index: int, size: int, limit: int) -> str:
    """The quarantine reason for a record above `ingest.max_record_bytes`, with the fix."""
    return (
        f"record {index} is {human_size(size)}, above ingest.max_record_bytes={binary_size(limit)}; "
        "raise it to keep it"
    )


def first_bytes(stream: BinaryIO) -> bytes:
    """The first bytes of a peekable stream without consuming them (BOM included)."""
    return stream.peek(SNIFF_BYTES)[:SNIFF_BYTES] if hasattr(stream, "peek") else b""


def looks_utf16(head: bytes) -> bool:
    """True when the input starts with a UTF-16/32 byte-order mark or has NULs between ASCII bytes."""
    return head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)) or (len(head) > 3 and head[1:4:2] == b"\0\0")


class Utf8Guard:
    """A file-like wrapper for ijson: strips a BOM, replaces invalid UTF-8 and remembers where it was.

    yajl stops the whole parse at the first invalid byte, which would lose every later record of a
    multi-gigabyte export; so invalid sequences become U+FFFD here and the record holding them is
    quarantined by `iter_json_items` with the byte offset (the codecs module decodes, but does not
    report offsets and re-encode in one pass, hence this small wrapper).
    """

    def __init__(self, raw: BinaryIO) -> None:
        self.raw = raw
        self.pos = 0  # bytes consumed from raw
        self.bad: list[int] = []  # byte offsets of invalid sequences not yet attributed to a record
        self._tail = b""
        self._first = True

    def read(self, n: int = -1) -> bytes:
        """Up to about `n` bytes of valid UTF-8 (empty only at the end of the input, or for n == 0)."""
        if n == 0:  # ijson probes the stream type with read(0)
            return b""
        while True:
            chunk = self.raw.read(n if n and n > 0 else READ_CHUNK)
            base = self.pos - len(self._tail)
            self.pos += len(chunk)
            if self._first and chunk:
                self._first = False
                if chunk.startswith(BOM):
                    chunk, base = chunk[len(BOM) :], base + len(BOM)
            out = self._clean(self._tail + chunk, base, final=not chunk)
            if out or not chunk:
                return out

    def _clean(self, data: bytes, base: int, *, final: bool) -> bytes:
        """`data` with invalid sequences replaced; an incomplete trailing character is kept for later."""
        out = []
        self._tail = b""
        while data:
            try:
                data.decode("utf-8")
            except UnicodeDecodeError as exc:
                if not final and exc.reason == "unexpected end of data" and exc.end == len(data):
                    out.append(data[: exc.start])
                    self._tail = data[exc.start :]
                    break
                out.append(data[: exc.start] + _REPLACEMENT)
                self.bad.append(base + exc.start)
                base += exc.end
                data = data[exc.end :]
                continue
            out.append(data)
            break
        return b"".join(out)


_SHORT = reprlib.Repr()
_SHORT.maxlevel, _SHORT.maxstring, _SHORT.maxother, _SHORT.maxlist, _SHORT.maxdict = 8, 200, 200, 20, 20


def excerpt(obj: Any) -> bytes:
    """The start of a parsed object as JSON, for a quarantine excerpt; never raises.

    orjson refuses objects nested deeper than 255 levels (and lone surrogates); those get a
    depth-bounded repr instead, because an excerpt must never be what stops a run.
    """
    try:
        return orjson.dumps(obj, default=str, option=orjson.OPT_NON_STR_KEYS)[:800]
    except (TypeError, ValueError, RecursionError):
        return _SHORT.repr(obj)[:800].encode("utf-8", "replace")


def _has_replacement(obj: Any) -> bool:
    """True when the object holds U+FFFD (where Utf8Guard replaced invalid bytes)."""
    try:
        return "\ufffd" in orjson.dumps(obj).decode()
    except (TypeError, ValueError, RecursionError):
        return True  # too deep (or odd) to serialise: attributed to the invalid bytes read before it


def iter_json_items(
    stream: BinaryIO, display: str, opts: ReaderOptions, *, jsonl: bool | None = None
) -> Iterator[Item | Quarantined]:
    """Top-level objects of a JSON array, JSON document(s) or JSONL stream, or quarantine rows.

    `jsonl=None` decides from the content: a first line that parses on its own means JSONL.
    """
    head = first_bytes(stream)
    text = head[len(BOM) :] if head.startswith(BOM) else head
    start = text.lstrip()[:1]
    if jsonl is None:
        first_line = text.split(b"\n", 1)[0].strip()
        jsonl = start != b"[" and _parses(first_line) and (b"\n" in text or len(head) < SNIFF_BYTES)
    if jsonl:
        yield from iter_jsonl(stream, display, opts)
    elif start == b"[":
        yield from _iter_ijson(stream, display, opts, "item", multiple=False)
    else:
        yield from _iter_ijson(stream, display, opts, "", multiple=True)


def _parses(line: bytes) -> bool:
    try:
        orjson.loads(line)
    except orjson.JSONDecodeError:
        return False
    return True


def _iter_ijson(
    stream: BinaryIO, display: str, opts: ReaderOptions, prefix: str, *, multiple: bool
) -> Iterator[Item | Quarantined]:
    """Objects of a JSON array (prefix 'item') or of concatenated JSON documents (prefix '')."""
    guard = Utf8Guard(stream)
    limit = opts.max_record_bytes
    index = 0
    before = 0
    items = _JSON.items(guard, prefix, use_float=True, multiple_values=multiple, buf_size=READ_CHUNK)
    try:
        for obj in items:
            size = guard.pos - before
            before = guard.pos
            # ijson reads ahead by up to one buffer, so `size` is exact to within READ_CHUNK.
            if size - READ_CHUNK > limit:
                yield Quarantined.of(display, oversize_reason(index, size, limit), index=index)
            elif guard.bad and guard.bad[0] < guard.pos and _has_replacement(obj):
                offset = guard.bad.pop(0)
                guard.bad = [b for b in guard.bad if b >= guard.pos]
                reason = (
                    f"record {index}: invalid UTF-8 at byte offset {offset}; "
                    "re-encode the file as UTF-8 to keep this record"
                )
                yield Quarantined.of(display, reason, index=index, raw=excerpt(obj))
            else:
                yield Item(index, None, obj)
            index += 1
    except ijson.IncompleteJSONError as exc:
        message = str(exc).split("\n", 1)[0]
        if "premature EOF" in message or "incomplete JSON" in message:
            reason = f"file ends inside record {index} (truncated?); the records before it were kept"
        else:
            reason = (
                f"record {index}: malformed JSON near byte offset {guard.pos}: {message}; "
                "records after it could not be read"
            )
        yield Quarantined.of(display, reason, index=index)


def iter_jsonl(stream: BinaryIO, display: str, opts: ReaderOptions) -> Iterator[Item | Quarantined]:
    """One object per line; bad lines become quarantine rows with line number and byte offset."""
    limit = opts.max_record_bytes
    line_no = 0
    index = 0
    offset = 0
    while True:
        raw, size = _read_line(stream, limit)
        if not size:
            return
        line_no += 1
        start = offset
        offset += size
        if raw is None:
            yield Quarantined.of(display, oversize_reason(index, size, limit), index=index, line=line_no)
            index += 1
            continue
        if line_no == 1 and raw.startswith(BOM):
            raw = raw[len(BOM) :]
        if not raw.strip():
            continue
        try:
            obj = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            yield Quarantined.of(
                display, _jsonl_reason(raw, exc, index, line_no, start), index=index, line=line_no, raw=raw
            )
        else:
            yield Item(index, line_no, obj)
        index += 1


def _read_line(stream: BinaryIO, limit: int) -> tuple[bytes | None, int]:
    """The next line and its size; (None, size) for a line above `limit`, read past without keeping it.

    Reads in READ_CHUNK pieces so an oversized line costs at most `limit` bytes of memory.
    """
    raw = stream.readline(READ_CHUNK)
    if len(raw) < READ_CHUNK or raw.endswith(b"\n"):
        return (raw if len(raw) <= limit else None), len(raw)
    parts: list[bytes] | None = [raw]
    size = len(raw)
    while True:
        chunk = stream.readline(READ_CHUNK)
        size += len(chunk)
        if parts is not None:
            parts.append(chunk)
            if size > limit:
                parts = None
        if not chunk or chunk.endswith(b"\n"):
            return (b"".join(parts) if parts is not None else None), size


def _jsonl_reason(raw: bytes, exc: orjson.JSONDecodeError, index: int, line_no: int, start: int) -> str:
    """Why one JSONL line failed: invalid UTF-8 (with byte offset), truncation, or the parser's message."""
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as bad:
        return (
            f"line {line_no}: invalid UTF-8 at byte offset {start + bad.start} (column {bad.start + 1}); "
            "re-encode the file as UTF-8 to keep this record"
        )
    if not raw.endswith(b"\n") and "unexpected end of data" in str(exc).lower():
        return f"file ends inside record {index} (truncated?); the records before it were kept"
    if "depth limit" in str(exc).lower() or "recursion" in str(exc).lower():
        return f"line {line_no}: nested deeper than the JSON parser's limit of 1024 levels; not read"
    return f"line {line_no}: malformed JSON: {exc}"
