"""Stream one JSON document: its top-level fields whole, the elements of chosen arrays one by one.

Chat exports are single JSON objects whose bulk is one array (`messages`, Telegram's `chats.list`).
`iter_json_items` would hand over the whole object at once and lose everything when the file is
truncated; here each array element is built on its own (ijson events + ObjectBuilder), so a
truncated or malformed file keeps every element before the damage and the quarantine row says
which element and byte offset broke. Invalid UTF-8 is replaced by `Utf8Guard` and the element that
held it is quarantined, as for every other JSON input.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO

import ijson
import orjson

from curator.ingest.base import Quarantined
from curator.ingest.sources import READ_CHUNK, Item, Utf8Guard

_JSON = ijson.get_backend("yajl2_c")


@dataclass(frozen=True)
class Field:
    """A top-level field of the document (everything except the streamed arrays)."""

    key: str
    value: Any


@dataclass(frozen=True)
class Element:
    """One element of a streamed array (`prefix` says which), with its 0-based position."""

    prefix: str
    item: Item


def stream_document(
    stream: BinaryIO, display: str, arrays: tuple[str, ...]
) -> Iterator[Field | Element | Quarantined]:
    """Fields and array elements of the JSON object in `stream`, in file order; a parse error ends it
    with one quarantine row naming the element and byte offset (the elements before it were yielded)."""
    guard = Utf8Guard(stream)
    events = _JSON.parse(guard, buf_size=READ_CHUNK)
    counts: dict[str, int] = dict.fromkeys(arrays, 0)
    builder: ijson.ObjectBuilder | None = None
    building = ""
    start = 0
    try:
        first = next(events, None)
        if first is None or first[1] != "start_map":
            what = "empty" if first is None else f"a JSON {first[1].replace('start_', '')}"
            yield Quarantined.of(display, f"the document is {what}, not the JSON object this export format writes")
            return
        for prefix, event, value in events:
            if builder is not None:
                builder.event(event, value)
                if not builder.containers:
                    yield from _finish(builder.value, building, counts, display, guard, start)
                    builder = None
                continue
            if event in ("map_key", "end_map", "end_array"):
                continue  # keys, and the ends of containers that are not built (the document, `chats`)
            top_field = bool(prefix) and "." not in prefix and not any(a.startswith(prefix + ".") for a in arrays)
            if prefix in counts or top_field:
                builder, building, start = ijson.ObjectBuilder(), prefix, guard.pos
                builder.event(event, value)
                if not builder.containers:  # a scalar
                    yield from _finish(builder.value, building, counts, display, guard, start)
                    builder = None
    except ijson.IncompleteJSONError as exc:
        message = str(exc).split("\n", 1)[0]
        where = f"element {counts[building]} of '{building.removesuffix('.item')}'" if building in counts \
            else f"field '{building}'" if building else "the document"
        if "premature EOF" in message or "incomplete JSON" in message:
            reason = f"file ends inside {where} (truncated?); what came before it was kept"
        else:
            reason = f"malformed JSON in {where} near byte offset {guard.pos}: {message}; the rest was not read"
        yield Quarantined.of(display, reason, index=counts.get(building))


def _finish(
    value: Any, prefix: str, counts: dict[str, int], display: str, guard: Utf8Guard, start: int
) -> Iterator[Field | Element | Quarantined]:
    """The built value as a Field or an Element, or a quarantine row when it held invalid UTF-8."""
    if prefix not in counts:
        yield Field(prefix, value)
        return
    i = counts[prefix]
    counts[prefix] = i + 1
    bad = [b for b in guard.bad if b >= start - READ_CHUNK]
    if bad and "\ufffd" in orjson.dumps(value).decode():
        guard.bad = [b for b in guard.bad if b >= guard.pos]
        reason = (
            f"element {i} of '{prefix.removesuffix('.item')}': invalid UTF-8 at byte offset {bad[0]}; "
            "re-encode the file as UTF-8 to keep it"
        )
        yield Quarantined.of(display, reason, index=i, raw=orjson.dumps(value)[:800])
        return
    yield Element(prefix, Item(i, None, value))
