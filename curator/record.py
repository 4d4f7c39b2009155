"""The canonical record: one shape for every source format, validated against `schemas/record.schema.json`.

Readers build records with `make_record`, which derives the content id; the pipeline moves them as
Arrow/Polars batches with the fixed `RECORD_SCHEMA` so every batch concatenates without casting.
"""

from __future__ import annotations

import hashlib
import json
from functools import cache
from pathlib import Path
from typing import Any, TypedDict

import jsonschema
import orjson
import pyarrow as pa

SCHEMA_DIR = Path(__file__).resolve().parent.parent / "schemas"
ROLES = ("system", "user", "assistant", "tool")


class ToolCall(TypedDict):
    id: str | None
    name: str
    arguments: str


class Message(TypedDict, total=False):
    role: str
    content: str
    name: str | None
    tool_calls: list[ToolCall] | None
    tool_call_id: str | None


class Source(TypedDict, total=False):
    file: str
    index: int
    line: int | None
    format: str
    path: str | None


class Record(TypedDict, total=False):
    id: str
    messages: list[Message]
    context: str | None
    tools: str | None
    category: str | None
    language: str | None
    source: Source
    meta: str | None


TOOL_CALL_TYPE = pa.struct([("id", pa.string()), ("name", pa.string()), ("arguments", pa.string())])
MESSAGE_TYPE = pa.struct(
    [
        ("role", pa.string()),
        ("content", pa.string()),
        ("name", pa.string()),
        ("tool_calls", pa.list_(TOOL_CALL_TYPE)),
        ("tool_call_id", pa.string()),
    ]
)
SOURCE_TYPE = pa.struct(
    [
        ("file", pa.string()),
        ("index", pa.int64()),
        ("line", pa.int64()),
        ("format", pa.string()),
        ("path", pa.string()),
    ]
)
RECORD_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("messages", pa.list_(MESSAGE_TYPE)),
        ("context", pa.string()),
        ("tools", pa.string()),
        ("category", pa.string()),
        ("language", pa.string()),
        ("source", SOURCE_TYPE),
        ("meta", pa.string()),
    ]
)


def load_schema(name: str) -> dict[str, Any]:
    """Read one of the project's JSON Schemas from `schemas/`."""
    return json.loads((SCHEMA_DIR / name).read_text(encoding="utf-8"))


@cache
def validator(name: str) -> jsonschema.protocols.Validator:
    """A compiled validator for a schema file, built once per process."""
    schema = load_schema(name)
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def schema_errors(instance: Any, name: str = "record.schema.json") -> list[str]:
    """Every violation of `name` in `instance`, each as 'path: message' (empty when valid)."""
    errors = sorted(validator(name).iter_errors(instance), key=lambda e: list(e.absolute_path))
    out = []
    for err in errors:
        where = "/".join(str(p) for p in err.absolute_path) or "(root)"
        message = err.message if len(err.message) < 200 else err.message[:200] + "..."
        out.append(f"{where}: {message}")
    return out


_ID_CHARS = frozenset("0123456789abcdef")
_MESSAGE_KEYS = frozenset(("role", "content", "name", "tool_calls", "tool_call_id"))
_RECORD_KEYS = frozenset(("id", "messages", "context", "tools", "category", "language", "source", "meta"))
_SOURCE_KEYS = frozenset(("file", "index", "line", "format", "path"))


def _opt_str(value: Any) -> bool:
    return value is None or type(value) is str


def is_valid_record(rec: Any) -> bool:
    """Fast check of exactly what `record.schema.json` requires (tests hold the two in agreement).

    jsonschema validates ~4k records/s; ingest must run at 20k+/s, so every record passes this check
    and only a record that fails it goes through jsonschema, to name each violation.
    """
    if type(rec) is not dict or not rec.keys() <= _RECORD_KEYS:
        return False
    rid, msgs, src = rec.get("id"), rec.get("messages"), rec.get("source")
    if type(rid) is not str or len(rid) != 24 or not _ID_CHARS.issuperset(rid):
        return False
    if type(msgs) is not list or not msgs or type(src) is not dict or not src.keys() <= _SOURCE_KEYS:
        return False
    if type(src.get("file")) is not str or type(src.get("format")) is not str or not _opt_str(src.get("path")):
        return False
    index, line = src.get("index"), src.get("line")
    if type(index) is not int or index < 0 or not (line is None or (type(line) is int and line >= 1)):
        return False
    if not all(_opt_str(rec.get(k)) for k in ("context", "tools", "category", "language", "meta")):
        return False
    for m in msgs:
        if type(m) is not dict or not m.keys() <= _MESSAGE_KEYS or m.get("role") not in ROLES:
            return False
        if type(m.get("content")) is not str or not _opt_str(m.get("name")) or not _opt_str(m.get("tool_call_id")):
            return False
        calls = m.get("tool_calls")
        if calls is not None:
            if type(calls) is not list:
                return False
            for c in calls:
                if type(c) is not dict or not c.keys() <= {"id", "name", "arguments"} or not _opt_str(c.get("id")):
                    return False
                if type(c.get("name")) is not str or type(c.get("arguments")) is not str:
                    return False
    return True


def content_key(messages: list[Message], context: str | None, tools: str | None) -> bytes:
    """The canonical JSON that a record's id hashes: what the model sees, not where it came from."""
    turns = [
        [
            m["role"],
            m["content"],
            m.get("name"),
            [[c.get("name"), c.get("arguments")] for c in (m.get("tool_calls") or [])],
        ]
        for m in messages
    ]
    try:
        return orjson.dumps([turns, context, tools])
    except orjson.JSONEncodeError:  # lone surrogates, which orjson refuses: the stdlib encodes them
        text = json.dumps([turns, context, tools], ensure_ascii=False, separators=(",", ":"))
        return text.encode("utf-8", "surrogatepass")


def record_id(messages: list[Message], context: str | None = None, tools: str | None = None) -> str:
    """Content-derived id: identical conversations get identical ids on every run and machine."""
    return hashlib.sha256(content_key(messages, context, tools)).hexdigest()[:24]


def message(
    role: str,
    content: str,
    *,
    name: str | None = None,
    tool_calls: list[ToolCall] | None = None,
    tool_call_id: str | None = None,
) -> Message:
    """A message with every field present, so Arrow sees one struct shape."""
    return {"role": role, "content": content, "name": name, "tool_calls": tool_calls, "tool_call_id": tool_call_id}


def make_record(
    messages: list[Message],
    *,
    source: Source,
    context: str | None = None,
    tools: str | None = None,
    category: str | None = None,
    meta: dict[str, Any] | None = None,
) -> Record:
    """Assemble a canonical record and derive its id from its content."""
    msgs = [message(**m) for m in messages]
    src: Source = {"line": None, "path": None, **source}
    return {
        "id": record_id(msgs, context, tools),
        "messages": msgs,
        "context": context,
        "tools": tools,
        "category": category,
        "language": None,
        "source": src,
        "meta": json.dumps(meta, ensure_ascii=False, sort_keys=True, default=str) if meta else None,
    }


def record_text(rec: Record) -> str:
    """All human-readable text of a record (context first, then every turn), for signals and hashing."""
    parts = [rec.get("context") or ""]
    for m in rec["messages"]:
        parts.append(m["content"])
        for call in m.get("tool_calls") or []:
            parts.append(call["arguments"])
    return "\n".join(p for p in parts if p)


def to_table(records: list[Record]) -> pa.Table:
    """Records as an Arrow table with the fixed canonical schema."""
    return pa.Table.from_pylist(records, schema=RECORD_SCHEMA)
