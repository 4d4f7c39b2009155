"""`write_export`: kept records in the chat formats other trainers read, split the way `pack` splits them.

Three formats, each written the way its consumer documents it:

- `openai`: `OUT/{split}.jsonl`, one OpenAI chat fine-tuning example per line: `messages` (role,
  content, `name`; assistant `tool_calls` as `{id, type: "function", function: {name, arguments}}`
  with `arguments` a JSON string; `tool` messages with `tool_call_id`), `tools` as
  `[{type: "function", function: {...}}]` when the record offers tools, then `id` and `category`.
  OpenAI pairs results with calls by id: a call without an id gets `call_N`, and a tool message
  without `tool_call_id` answers the oldest unanswered call before it (counted in `notes`).
- `sharegpt`: `OUT/{split}.jsonl` with `conversations` (`from` human / gpt / function_call /
  observation / system, `value`), `system` (a leading system turn), `tools` (JSON text of the
  function definitions), `id` and `category`, as LLaMA-Factory's data docs describe, and
  `OUT/dataset_info.json` registering each split for LLaMA-Factory (`dataset_dir: OUT`). A
  function_call value is the JSON `{"name", "arguments"}` (a list of them for parallel calls),
  arguments as a JSON value. LLaMA-Factory skips a conversation whose turns do not alternate
  human/observation then gpt/function_call (Axolotl and TRL read it): such records are written and
  counted (`turns_not_alternating`).
- `hf`: a `datasets.DatasetDict` saved with `save_to_disk`, one dataset split per split: `messages`
  exactly as `pack` hands them to the chat template (`chat.to_hf_messages`: tool-call arguments as
  JSON values) in a `List(Json())` column, so TRL's SFTTrainer renders the text our shards hold;
  `tools` as JSON text (TRL parses it), `id`, `category`.

Every row's `category` is the record's, or `uncategorized` (as in the shards and reports), so no
split file has a column that is null throughout (`datasets` cannot then cast one split to another).

Which records, on which side: the kept records as `pack` reads them (`read_kept`: rows with a
drop_reason and repeated ids counted out) and the sides of `record_sides`, so every record sits on
the same side in the shards and in each export. The train side is not balanced (balancing counts
rendered tokens, so it needs a tokenizer: that is `pack`'s job). A record without an assistant turn
is skipped and counted, as `pack` does. Context goes into the first user turn, as the model sees it.
Records are written in id order; `OUT/export.json` (files, counts, checksums) is written last.
Same input + config give byte-identical files.
"""

from __future__ import annotations

import itertools
import json
from collections import Counter, deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import polars as pl

from curator.config import CurateConfig, config_hash
from curator.format.chat import UNCATEGORIZED, to_hf_messages
from curator.format.shards import SPLITS, progress_bar, read_kept
from curator.format.split import SPLIT, record_sides
from curator.io import atomic_dir, sha256_file, write_json

FORMATS = ("openai", "sharegpt", "hf")
EXPORT_VERSION = 1
SUMMARY = "export.json"
SHAREGPT_FROM = {"system": "system", "user": "human", "assistant": "gpt", "tool": "observation"}
HF_CHUNK = 2048  # rows turned into Arrow at a time, so Python dicts never hold a whole split


class ExportError(Exception):
    """An export that cannot be written; the message says what to change."""


Row = dict[str, Any]
RowFn = Callable[[Row, Counter], Row]


def tool_list(rec: Row, notes: Counter) -> list[dict[str, Any]] | None:
    """The record's tool definitions parsed (what `pack` passes the template), or None; bad JSON is counted."""
    text = rec.get("tools")
    if not text:
        return None
    try:
        parsed = json.loads(text)
    except ValueError:
        parsed = None
    if not isinstance(parsed, list) or not all(isinstance(t, dict) for t in parsed):
        notes["tools_unparseable"] += 1
        return None
    return parsed


def _wrapped(tool: dict[str, Any]) -> bool:
    """An OpenAI-style definition `{type: function, function: {...}}` (else a bare `{name, parameters}`)."""
    return tool.get("type") == "function" and isinstance(tool.get("function"), dict)


def openai_row(rec: Row, notes: Counter) -> Row:
    """One OpenAI chat fine-tuning example: messages with string arguments and call ids, tools wrapped."""
    msgs = to_hf_messages(rec)
    used = {c["id"] for m in rec["messages"] for c in (m.get("tool_calls") or []) if c.get("id")}
    fresh = (f"call_{n}" for n in itertools.count() if f"call_{n}" not in used)
    pending: deque[str] = deque()
    for src, msg in zip(rec["messages"], msgs, strict=True):
        if src.get("tool_calls"):
            calls = []
            for call in src["tool_calls"]:
                cid = call.get("id")
                if not cid:
                    cid = next(fresh)
                    notes["tool_call_ids_added"] += 1
                calls.append({"id": cid, "type": "function",
                              "function": {"name": call["name"], "arguments": call.get("arguments") or ""}})
                pending.append(cid)
            msg["tool_calls"] = calls
        elif msg["role"] == "tool":
            if "tool_call_id" in msg:
                if msg["tool_call_id"] in pending:
                    pending.remove(msg["tool_call_id"])
            elif pending:
                msg["tool_call_id"] = pending.popleft()
                notes["tool_call_ids_paired"] += 1
    out: Row = {"messages": msgs}
    tools = tool_list(rec, notes)
    if tools:
        out["tools"] = [t if _wrapped(t) else {"type": "function", "function": t} for t in tools]
    return {**out, "id": rec["id"], "category": rec.get("category") or UNCATEGORIZED}


def _alternates(turns: list[dict[str, str]]) -> bool:
    """LLaMA-Factory's rule: human/observation at even positions, gpt/function_call at odd ones, an even count."""
    sides = (("human", "observation"), ("gpt", "function_call"))
    return len(turns) % 2 == 0 and all(t["from"] in sides[i % 2] for i, t in enumerate(turns))


def sharegpt_row(rec: Row, notes: Counter) -> Row:
    """One ShareGPT conversation as LLaMA-Factory reads it: turns, a system column, tools as JSON text."""
    msgs = to_hf_messages(rec)
    system = msgs[0]["content"] if msgs[0]["role"] == "system" else ""
    turns: list[dict[str, str]] = []
    for msg in msgs[1 if system else 0 :]:
        if msg.get("tool_calls"):
            if msg["content"]:
                turns.append({"from": "gpt", "value": msg["content"]})
            calls = [{"name": c["function"]["name"], "arguments": c["function"]["arguments"]}
                     for c in msg["tool_calls"]]
            turns.append({"from": "function_call",
                          "value": json.dumps(calls[0] if len(calls) == 1 else calls, ensure_ascii=False)})
        else:
            turns.append({"from": SHAREGPT_FROM[msg["role"]], "value": msg["content"]})
    if not _alternates(turns):
        notes["turns_not_alternating"] += 1
    tools = tool_list(rec, notes)
    if tools is None:
        tools_text = ""
    elif any(_wrapped(t) for t in tools):
        tools_text = json.dumps([t["function"] if _wrapped(t) else t for t in tools], ensure_ascii=False)
    else:
        tools_text = rec["tools"]  # already bare definitions: kept verbatim, so a re-read gives the same record
    return {"conversations": turns, "system": system, "tools": tools_text, "id": rec["id"],
            "category": rec.get("category") or UNCATEGORIZED}


def hf_row(rec: Row, notes: Counter) -> Row:
    """One row of the HF dataset: the template's messages, tools as JSON text (TRL parses a string)."""
    tools = tool_list(rec, notes)
    return {"messages": to_hf_messages(rec), "tools": None if tools is None else rec["tools"], "id": rec["id"],
            "category": rec.get("category") or UNCATEGORIZED}


ROWS: dict[str, RowFn] = {"openai": openai_row, "sharegpt": sharegpt_row, "hf": hf_row}


def _check_out(out_dir: Path) -> None:
    """Write only into a new or empty dir, or over an earlier export (never over someone's other files)."""
    if out_dir.is_file():
        raise ExportError(f"{out_dir}: a file; give a directory for the export")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not (out_dir / SUMMARY).is_file():
        raise ExportError(f"{out_dir}: not empty and not an earlier export (no {SUMMARY}); choose a new directory")


def _write_jsonl(records: Iterator[Row], root: Path, fmt: str, row: RowFn, notes: Counter) -> dict[str, int]:
    """Stream rows into ROOT/{split}.jsonl (plus LLaMA-Factory's dataset_info.json); return the rows per split."""
    counts: Counter = Counter()
    with ExitStack() as stack:
        handles: dict[str, Any] = {}
        for rec in records:
            name = rec[SPLIT]
            if name not in handles:
                handles[name] = stack.enter_context(open(root / f"{name}.jsonl", "w", encoding="utf-8"))
            handles[name].write(json.dumps(row(rec, notes), ensure_ascii=False) + "\n")
            counts[name] += 1
    if fmt == "sharegpt":
        info = {name: {"file_name": f"{name}.jsonl", "formatting": "sharegpt",
                       "columns": {"messages": "conversations", "system": "system", "tools": "tools"}}
                for name in SPLITS if name in counts}
        write_json(info, root / "dataset_info.json")
    return dict(counts)


def _write_hf(records: Iterator[Row], root: Path, row: RowFn, notes: Counter) -> dict[str, int]:
    """Save the rows as a DatasetDict in ROOT (`save_to_disk`), built a chunk of rows at a time."""
    import datasets

    features = datasets.Features({
        "messages": datasets.List(datasets.Json()),
        "tools": datasets.Value("string"),
        "id": datasets.Value("string"),
        "category": datasets.Value("string"),
    })
    parts: dict[str, list[datasets.Dataset]] = {}
    chunk: dict[str, list[Row]] = {}

    def flush(name: str) -> None:
        parts.setdefault(name, []).append(datasets.Dataset.from_list(chunk.pop(name), features=features))

    for rec in records:
        name = rec[SPLIT]
        chunk.setdefault(name, []).append(row(rec, notes))
        if len(chunk[name]) >= HF_CHUNK:
            flush(name)
    for name in list(chunk):
        flush(name)
    dd = datasets.DatasetDict({n: datasets.concatenate_datasets(p) for n, p in sorted(parts.items())})
    quiet = datasets.are_progress_bars_disabled()
    datasets.disable_progress_bars()  # our bar already counts the rows; datasets' tqdm bars would interleave
    try:
        dd.save_to_disk(str(root))
    finally:
        if not quiet:
            datasets.enable_progress_bars()
    return {n: d.num_rows for n, d in dd.items()}


def write_export(
    kept: Sequence[Path] | pl.DataFrame, out_dir: Path, cfg: CurateConfig, fmt: str, *, progress: bool = True
) -> dict[str, Any]:
    """Write kept records as `fmt` (openai, sharegpt, hf) in `out_dir`, split as pack splits; return export.json."""
    if fmt not in FORMATS:
        raise ExportError(f"export format {fmt!r}: use one of {', '.join(FORMATS)}")
    out_dir = Path(out_dir)
    _check_out(out_dir)
    df, input_counts = read_kept(kept)
    if df.height == 0:
        raise ExportError("no kept records to export: every input row was dropped or the input is empty")
    for col in ("context", "tools"):
        if col not in df.columns:
            df = df.with_columns(pl.lit(None, dtype=pl.String).alias(col))
    frame = df.join(record_sides(df, cfg.split, cfg.seed), on="id", how="left").sort("id")
    has_answer = pl.col("messages").list.eval(pl.element().struct.field("role") == "assistant").list.any()
    frame = frame.with_columns(has_answer.alias("_answered"))
    skipped = {"no_assistant_turn": int((~frame["_answered"]).sum())}
    exported = frame.filter(pl.col("_answered")).select("id", "messages", "context", "tools", "category", SPLIT)
    categories = {
        name: dict(sorted(Counter(c or UNCATEGORIZED for c in part["category"].to_list()).items()))
        for (name,), part in exported.group_by(SPLIT, maintain_order=True)
    }
    notes: Counter = Counter()
    with progress_bar(progress) as bar, atomic_dir(out_dir) as root:
        task = bar.add_task(f"export {fmt}", total=exported.height)

        def records() -> Iterator[Row]:
            for rec in exported.iter_rows(named=True):
                yield rec
                bar.advance(task)

        if fmt == "hf":
            counts = _write_hf(records(), root, ROWS[fmt], notes)
        else:
            counts = _write_jsonl(records(), root, fmt, ROWS[fmt], notes)
        summary = {
            "export_version": EXPORT_VERSION,
            "format": fmt,
            "seed": cfg.seed,
            "split": cfg.split.model_dump(mode="json"),
            "splits": {
                name: {"records": counts[name], "path": name if fmt == "hf" else f"{name}.jsonl",
                       "categories": categories[name]}
                for name in SPLITS if name in counts
            },
            "records": {**input_counts, "count": df.height, "exported": exported.height, "skipped": skipped},
            "notes": dict(sorted(notes.items())),
            "files": [
                {"path": p.relative_to(root).as_posix(), "bytes": p.stat().st_size, "sha256": sha256_file(p)}
                for p in sorted(root.rglob("*")) if p.is_file()
            ],
            "config_hash": config_hash(cfg),
        }
        write_json(summary, root / SUMMARY)
    return summary
