"""Property-based fuzzing of every reader: no input may crash a run, hang it, or lose a record.

For every generated input (random JSON shapes in every container, random bytes, truncation, deep
nesting, other encodings, broken CSV quoting, random ChatGPT link graphs):
- reading raises nothing but `UnreadableInput` (a clear whole-file error, caught by the pre-check);
- it finishes within `TIME_LIMIT` seconds (a SIGALRM watchdog turns a hang into a failure);
- every record it yields is schema-valid, and a few full runs reconcile read = kept + dropped + quarantined.

The example count is bounded for `make test` (`CURATOR_FUZZ_EXAMPLES`, default 25 per property,
derandomized so CI is stable); `bench/fuzz_readers.py` runs the same properties longer and randomly.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import signal
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from curator.ingest import MessageTally, Note, Quarantined, ReaderOptions, UnreadableInput, detect_format, read_input
from curator.record import schema_errors

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "sample_data"
TIME_LIMIT = float(os.environ.get("CURATOR_FUZZ_TIME_LIMIT", "20"))  # seconds per example (generous: loaded CI)
EXAMPLES = int(os.environ.get("CURATOR_FUZZ_EXAMPLES", "25"))
RANDOM = os.environ.get("CURATOR_FUZZ_RANDOM") == "1"  # bench: fresh random examples on every run
FUZZ = settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=not RANDOM,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
OPTS = ReaderOptions(max_record_bytes=256 * 1024, max_archive_bytes=16 * 1024 * 1024)

# --- generators -----------------------------------------------------------------------------------

KEYS = ("messages", "role", "content", "conversations", "from", "value", "mapping", "current_node", "parent",
        "children", "message", "author", "parts", "content_type", "text", "chat_messages", "sender", "prompt",
        "replies", "message_tree_id", "instruction", "input", "output", "response", "context", "category",
        "question", "answer", "tools", "tool_calls", "function", "name", "arguments", "id", "title", "system",
        "history", "instances", "recipient", "metadata", "attachments", "files", "type", "guild", "channel",
        "participants", "rank", "deleted", "weight", "function_call", "tool_call_id", "create_time", "ts")
ROLES = ("user", "assistant", "system", "tool", "human", "gpt", "function_call", "observation", "prompter",
         "developer", "function", "bot")
CONTENT_TYPES = ("text", "multimodal_text", "code", "execution_output", "thoughts", "reasoning_recap",
                 "user_editable_context", "tether_browsing_display", "image_asset_pointer", None)

texts = st.text(max_size=40) | st.sampled_from(["", " ", "Hello there, how are you?", "{{name}}", "\x00", "\u2028",
                                                "\ud800", "caf\u00e9", "```\ncode\n```", "a" * 300])
leaves = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | texts | st.sampled_from(ROLES)
json_values = st.recursive(
    leaves,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=6), inner,
                                                                max_size=5),
    max_leaves=25,
)


def maybe(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Mostly the well-typed value, sometimes anything at all."""
    return st.one_of(strategy, strategy, strategy, json_values)


roles = maybe(st.sampled_from(ROLES))
openai_rows = st.fixed_dictionaries(
    {"messages": maybe(st.lists(maybe(st.fixed_dictionaries({"role": roles, "content": maybe(texts)})), max_size=5))},
    optional={"tools": json_values, "id": json_values},
)
sharegpt_rows = st.fixed_dictionaries(
    {"conversations": maybe(st.lists(maybe(st.fixed_dictionaries({"from": roles, "value": maybe(texts)})),
                                     max_size=5))},
    optional={"system": maybe(texts), "id": json_values},
)
pair_rows = st.fixed_dictionaries(
    {"instruction": maybe(texts)},
    optional={"output": maybe(texts), "input": maybe(texts), "context": maybe(texts), "response": maybe(texts),
              "category": maybe(texts), "history": json_values, "instances": json_values},
)
claude_rows = st.fixed_dictionaries(
    {"uuid": texts, "chat_messages": maybe(st.lists(maybe(st.fixed_dictionaries(
        {"sender": maybe(st.sampled_from(["human", "assistant", "user", "bot"])), "text": maybe(texts)},
        optional={"content": json_values, "attachments": json_values, "files": json_values})), max_size=4))},
)
oasst_rows = st.fixed_dictionaries({"message_tree_id": texts, "prompt": maybe(st.fixed_dictionaries(
    {"role": maybe(st.sampled_from(["prompter", "assistant"])), "text": maybe(texts), "replies": json_values},
    optional={"rank": json_values, "deleted": json_values}))})


@st.composite
def chatgpt_convs(draw: st.DrawFn) -> dict[str, Any]:
    """A ChatGPT conversation with random `parent` / `children` links (cycles, dangling ids, missing keys)."""
    ids = draw(st.lists(st.sampled_from("abcdefgh"), min_size=1, max_size=6, unique=True))
    link = st.sampled_from([*ids, "zz", None])
    mapping = {}
    for nid in ids:
        node: dict[str, Any] = {"id": nid}
        if draw(st.booleans()):
            node["parent"] = draw(link)
        if draw(st.booleans()):
            node["children"] = draw(st.lists(link, max_size=3))
        content = {"content_type": draw(st.sampled_from(CONTENT_TYPES)), "parts": draw(maybe(st.lists(texts,
                                                                                                      max_size=2)))}
        if content["content_type"] is None:
            del content["content_type"]
        node["message"] = draw(st.none() | maybe(st.fixed_dictionaries(
            {"author": maybe(st.fixed_dictionaries({"role": roles})), "content": maybe(st.just(content))},
            optional={"create_time": maybe(st.floats(0, 2e9)), "recipient": maybe(st.sampled_from(["all", "python"])),
                      "metadata": json_values})))
        mapping[nid] = draw(maybe(st.just(node)))
    conv: dict[str, Any] = {"title": "t", "mapping": mapping}
    if draw(st.booleans()):
        conv["current_node"] = draw(link)
    return conv


rows = st.one_of(openai_rows, sharegpt_rows, pair_rows, claude_rows, oasst_rows, chatgpt_convs(), json_values)


def serialise(objs: list[Any], container: str) -> tuple[bytes, str]:
    """Objects as the bytes of one container, and the file suffix that container has."""
    dump = lambda o: json.dumps(o, ensure_ascii=False).encode("utf-8", "surrogatepass")  # noqa: E731
    if container == "jsonl":
        return b"".join(dump(o) + b"\n" for o in objs), ".jsonl"
    if container == "array":
        return b"[" + b",\n".join(dump(o) for o in objs) + b"]", ".json"
    if container == "docs":
        return b"\n".join(dump(o) for o in objs), ".json"
    if container == "pretty":
        return json.dumps(objs, indent=2).encode(), ".json"
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("conversations.json", b"[" + b",".join(dump(o) for o in objs) + b"]")
    return buf.getvalue(), ".zip"


CONTAINERS = st.sampled_from(["jsonl", "array", "docs", "pretty", "zip"])

# --- the property --------------------------------------------------------------------------------


@contextlib.contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Fail (TimeoutError) when the body runs longer than `seconds`: a hang is a failure, not a stuck suite."""

    def hung(signum: int, frame: Any) -> None:
        raise TimeoutError(f"reading did not finish within {seconds} s")

    previous = signal.signal(signal.SIGALRM, hung)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def read_checked(path: Path, fmt: str | None = None) -> list[Any] | None:
    """Everything read_input yields for `path`, checked; None when the whole file is refused (UnreadableInput)."""
    with time_limit(TIME_LIMIT):
        try:
            if fmt is None:
                detect_format(path)
            items = list(read_input(path, path.name, fmt, OPTS))
        except UnreadableInput as exc:
            assert str(exc).startswith(path.name) or str(path) in str(exc), f"the error must name the file: {exc}"
            return None
    for item in items:
        if isinstance(item, Quarantined):
            assert item.reason and item.file.startswith(path.name), item
        elif not isinstance(item, Note | MessageTally):
            assert schema_errors(item) == [], (schema_errors(item), item)
    return items


def write(data: bytes, suffix: str) -> Iterator[Path]:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"input{suffix}"
        path.write_bytes(data)
        yield path


@FUZZ
@given(objs=st.lists(rows, min_size=1, max_size=6), container=CONTAINERS,
       fmt=st.sampled_from([None, None, "openai", "sharegpt", "chatgpt", "claude", "alpaca", "oasst", "generic"]))
def test_random_json_shapes_in_every_container(objs: list[Any], container: str, fmt: str | None) -> None:
    data, suffix = serialise(objs, container)
    for path in write(data, suffix):
        items = read_checked(path, fmt)
        if items is not None and container == "jsonl":
            # one line, one item: nothing vanishes (notes are not records)
            assert len([i for i in items if not isinstance(i, Note | MessageTally)]) >= len(objs)


@FUZZ
@given(conv=chatgpt_convs())
def test_chatgpt_link_graphs_end(conv: dict[str, Any]) -> None:
    data, _ = serialise([conv], "array")
    for path in write(data, ".json"):
        items = read_checked(path, "chatgpt")
        assert items is not None and len(items) == 1  # one conversation: one record or one quarantine row


@FUZZ
@given(data=st.binary(max_size=600), suffix=st.sampled_from([".json", ".jsonl", ".csv", ".tsv", ".zip", ".parquet",
                                                             ".txt"]),
       prefix=st.sampled_from([b"", b"\xef\xbb\xbf", b"PK\x03\x04", b"PAR1", b"[", b'{"messages": [']))
def test_random_bytes(data: bytes, suffix: str, prefix: bytes) -> None:
    for path in write(prefix + data, suffix):
        if path.stat().st_size:
            read_checked(path)


SAMPLES = sorted(p for p in SAMPLE.rglob("*") if p.suffix in (".json", ".jsonl"))


@FUZZ
@given(sample=st.sampled_from(SAMPLES), cut=st.floats(0, 1), flips=st.lists(st.tuples(st.floats(0, 1),
                                                                                      st.integers(0, 255)),
                                                                            max_size=3))
def test_truncated_and_damaged_real_files(sample: Path, cut: float, flips: list[tuple[float, int]]) -> None:
    data = bytearray(sample.read_bytes()[: 60_000])
    data = data[: max(1, int(len(data) * cut))]
    for where, byte in flips:
        data[int(where * (len(data) - 1))] = byte
    for path in write(bytes(data), sample.suffix):
        read_checked(path)


@FUZZ
@given(depth=st.integers(1, 20_000), container=st.sampled_from(["jsonl", "array", "docs"]),
       where=st.sampled_from(["messages", "content", "extra"]))
def test_deep_nesting(depth: int, container: str, where: str) -> None:
    answer = {"role": "assistant", "content": "ok"}
    row = {"messages": "@"} if where == "messages" else \
        {"messages": [{"role": "user", "content": "@"}, answer]} if where == "content" else \
        {"messages": [{"role": "user", "content": "hi"}, answer], "extra": "@"}
    # built as text: json.dumps itself recurses and could not write 20,000 levels
    one = json.dumps(row).encode().replace(b'"@"', b"[" * depth + b'"x"' + b"]" * depth)
    data, suffix = {"jsonl": (one + b"\n", ".jsonl"), "array": (b"[" + one + b"]", ".json"),
                    "docs": (one + b"\n" + one, ".json")}[container]
    for path in write(data, suffix):
        items = read_checked(path, "openai")
        assert items is not None and len(items) == (2 if container == "docs" else 1)


@FUZZ
@given(encoding=st.sampled_from(["utf-16", "utf-16-le", "utf-16-be", "utf-32", "latin-1", "cp1252", "utf-8-sig"]),
       sample=st.sampled_from(SAMPLES))
def test_other_encodings(encoding: str, sample: Path) -> None:
    text = sample.read_text(encoding="utf-8")[:20_000]
    for path in write(text.encode(encoding, "replace"), sample.suffix):
        read_checked(path)


cells = st.text(alphabet=st.characters(blacklist_categories=["Cs"], blacklist_characters="\x00"), max_size=30)


@FUZZ
@example(table=[(",", " ")], damage=[])  # found by this suite: the sniffer's skipinitialspace ate the space
@example(table=[("", ""), ('";', "")], damage=[])  # found: the sniffer took ';' from a quoted cell as delimiter
@example(table=[("x", "y"), ("a", "b")], damage=[(0.99, "\n")])  # a blank line is no record
@given(table=st.lists(st.tuples(cells, cells), min_size=1, max_size=8),
       damage=st.lists(st.tuples(st.floats(0, 1), st.sampled_from(['"', "\n", ",", '""', "\r"])), max_size=3))
def test_csv_round_trip_and_damage(table: list[tuple[str, str]], damage: list[tuple[float, str]]) -> None:
    buf = io.StringIO()
    writer = csv.writer(buf)  # \r\n: a field holding \r or \n is quoted
    writer.writerow(["prompt", "response"])
    writer.writerows(table)
    text = buf.getvalue()
    for path in write(text.encode("utf-8"), ".csv"):
        items = read_checked(path, "generic")
        assert items is not None
        rows_read = [i for i in items if not isinstance(i, Note | MessageTally)]
        # undamaged: every row comes back, as a record with its text or a quarantine row (e.g. empty prompt)
        assert len(rows_read) == len(table), (text, items)
        records = [i for i in rows_read if isinstance(i, dict)]
        assert [r["messages"][1]["content"] for r in records] == \
            [row[1] for row, i in zip(table, rows_read, strict=True) if isinstance(i, dict)]
    for where, piece in damage:
        cut = int(where * len(text))
        text = text[:cut] + piece + text[cut:]
    for path in write(text.encode("utf-8"), ".csv"):
        read_checked(path, "generic")


@FUZZ
@given(table=st.lists(st.fixed_dictionaries({"prompt": maybe(texts), "response": maybe(texts)}), min_size=1,
                      max_size=5), cut=st.floats(0.05, 1))
def test_parquet_whole_and_cut(table: list[dict[str, Any]], cut: float) -> None:
    flat = [{k: json.dumps(v) if not isinstance(v, str | type(None)) else v for k, v in r.items()} for r in table]
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist([{k: (v or "").encode("utf-8", "replace").decode() for k, v in r.items()}
                                         for r in flat]), buf)
    data = buf.getvalue()
    for path in write(data, ".parquet"):
        items = read_checked(path, "generic")
        assert items is not None and len(items) == len(table)
    for path in write(data[: max(4, int(len(data) * cut))], ".parquet"):
        read_checked(path, "generic")


# --- a few full runs: the accounting reconciles whatever the input ---------------------------------


@settings(max_examples=max(2, EXAMPLES // 6), deadline=None, database=None, derandomize=not RANDOM,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(objs=st.lists(rows, min_size=1, max_size=8), container=CONTAINERS)
def test_full_runs_reconcile(objs: list[Any], container: str) -> None:
    from curator import api
    from curator.config import load_config

    data, suffix = serialise(objs, container)
    cfg = load_config(None, {"pii": {"enabled": False}})
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"input{suffix}"
        path.write_bytes(data)
        out = Path(tmp) / "out"
        with time_limit(TIME_LIMIT * 6):
            try:
                result = api.curate(cfg, out, inputs=[path], format="openai" if suffix == ".jsonl" else None,
                                    progress=False)
            except UnreadableInput:
                assert not (out / "_work").exists(), "an unreadable input must stop the run before any work"
                return
        c = result.counts
        assert c["read"] == c["kept"] + c["dropped"] + c["quarantined"]
        assert (out / "report.json").exists() and (out / "report.html").exists()
