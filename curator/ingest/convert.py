"""Per-row converters: one function per row shape, shared by JSON, JSONL, CSV, Parquet and HF inputs.

A converter takes one parsed object and where it came from, and returns canonical records (one
object can yield several: OpenAssistant paths, self-instruct instances). A structurally invalid
object raises `RowError` with a reason a person can act on; the reader turns it into a quarantine row.
Content that is structurally valid but empty is kept: the quality step drops it with `empty_turn`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson

from curator.ingest.base import ReaderOptions
from curator.record import Message, Record, Source, ToolCall, make_record, message

Converter = Callable[[Any, Source, ReaderOptions], list[Record]]


class RowError(Exception):
    """A row that cannot become a record: `reason` says what is wrong, `field` where."""

    def __init__(self, reason: str, field: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.field = field


def type_name(value: Any) -> str:
    """JSON-ish type name for messages ('int', 'dict', 'null')."""
    return "null" if value is None else type(value).__name__


def need_dict(obj: Any, what: str) -> dict[str, Any]:
    """`obj` when it is an object, else a RowError naming what was expected."""
    if not isinstance(obj, dict):
        raise RowError(f"{what} is {type_name(obj)}, expected an object", what)
    return obj


def need_list(row: dict[str, Any], key: str, items: str) -> list[Any]:
    """`row[key]` when it is a list, else a RowError saying it is missing or what it is instead."""
    value = row.get(key)
    if not isinstance(value, list):
        what = "missing" if value is None else f"{type_name(value)}, expected a list of {items}"
        raise RowError(f"'{key}' is {what}", key)
    return value


def need_str(value: Any, field: str, *, optional: bool = False) -> str | None:
    """`value` when it is a string (or None when optional), else a RowError naming the field."""
    if value is None and optional:
        return None
    if not isinstance(value, str):
        raise RowError(f"'{field}' is {type_name(value)}, expected a string", field)
    return value


def json_text(value: Any) -> str:
    """Tool arguments or definitions as JSON text: strings are kept as given, anything else serialised."""
    if isinstance(value, str):
        return value
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()


def tools_text(value: Any, field: str) -> str | None:
    """A tools/functions list as JSON text (kept verbatim when the source already gives text)."""
    if value is None or value == [] or value == "":
        return None
    if not isinstance(value, (str, list)):
        raise RowError(f"'{field}' is {type_name(value)}, expected a list of tool definitions", field)
    return json_text(value)


def keep_meta(row: dict[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    """The listed source fields that are present and not empty, for `meta`."""
    return {k: row[k] for k in keys if row.get(k) not in (None, "", [], {})}


# --- OpenAI chat fine-tuning: {"messages": [...], "tools"?, "functions"?} -------------------------

OPENAI_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant", "tool": "tool"}


def content_text(content: Any, field: str, skipped: dict[str, int]) -> str:
    """Message content as text: a string, null, or a list of parts ({type: text, text|value})."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise RowError(f"'{field}' is {type_name(content)}, expected a string or a list of content parts", field)
    texts = []
    for j, part in enumerate(content):
        if isinstance(part, str):
            texts.append(part)
            continue
        if not isinstance(part, dict):
            raise RowError(f"'{field}[{j}]' is {type_name(part)}, expected a content part object", field)
        kind = part.get("type", "text")
        if kind in ("text", "input_text", "output_text"):
            text = part.get("text", part.get("value"))
            texts.append(need_str(text, f"{field}[{j}].text") or "")
        else:
            skipped[str(kind)] = skipped.get(str(kind), 0) + 1
    return "".join(texts)


def openai_tool_calls(calls: Any, field: str) -> list[ToolCall] | None:
    """`tool_calls` ([{id, type: function, function: {name, arguments}}]) as canonical tool calls."""
    if calls is None or calls == []:
        return None
    if not isinstance(calls, list):
        raise RowError(f"'{field}' is {type_name(calls)}, expected a list", field)
    out: list[ToolCall] = []
    for j, call in enumerate(calls):
        call = need_dict(call, f"{field}[{j}]")
        fn = need_dict(call.get("function", call), f"{field}[{j}].function")
        name = need_str(fn.get("name"), f"{field}[{j}].function.name")
        out.append({"id": need_str(call.get("id"), f"{field}[{j}].id", optional=True), "name": name or "",
                    "arguments": json_text(fn.get("arguments", {}))})
    return out


def convert_messages(row: Any, src: Source, opts: ReaderOptions) -> list[Record]:
    """OpenAI chat fine-tuning row (also LLaMA-Factory `messages` with `value` content parts)."""
    row = need_dict(row, "row")
    msgs = need_list(row, "messages", "messages")
    out: list[Message] = []
    skipped: dict[str, int] = {}
    weights = []
    for i, m in enumerate(msgs):
        # Fast path for the common plain-text message; anything else takes the checked path below.
        if type(m) is dict and type(m.get("content")) is str and m.get("role") in OPENAI_ROLES \
                and not m.keys() & {"tool_calls", "function_call", "name", "tool_call_id"}:
            out.append(message(OPENAI_ROLES[m["role"]], m["content"]))
            weights.append(m.get("weight", m.get("loss_weight")))
            continue
        field = f"messages[{i}]"
        m = need_dict(m, field)
        role = m.get("role")
        if role == "function":  # legacy function result
            role = "tool"
        if role not in OPENAI_ROLES:
            raise RowError(
                f"message {i + 1}: 'role' is {role!r}, expected one of {'/'.join(OPENAI_ROLES)}", f"{field}.role"
            )
        calls = openai_tool_calls(m.get("tool_calls"), f"{field}.tool_calls")
        legacy = m.get("function_call")
        if legacy is not None:
            calls = (calls or []) + (openai_tool_calls([{"function": legacy}], f"{field}.function_call") or [])
        out.append(
            message(
                OPENAI_ROLES[role],
                content_text(m.get("content"), f"{field}.content", skipped),
                name=need_str(m.get("name"), f"{field}.name", optional=True),
                tool_calls=calls,
                tool_call_id=need_str(m.get("tool_call_id"), f"{field}.tool_call_id", optional=True),
            )
        )
        weights.append(m.get("weight", m.get("loss_weight")))
    if not out:
        raise RowError("'messages' is empty", "messages")
    meta = keep_meta(row, ("id",))
    if any(w is not None for w in weights):
        meta["weights"] = weights
    if skipped:
        meta["skipped_parts"] = skipped
    tools = tools_text(row.get("tools"), "tools") or tools_text(row.get("functions"), "functions")
    category = row.get("category") if isinstance(row.get("category"), str) else opts.category
    return [make_record(out, source=src, tools=tools, category=category, meta=meta)]


# --- ShareGPT: {"conversations": [{"from", "value"}], "system"?, "tools"?} --------------------------

SHAREGPT_ROLES = {
    "human": "user", "user": "user",
    "gpt": "assistant", "assistant": "assistant", "chatgpt": "assistant", "bard": "assistant", "bing": "assistant",
    "system": "system",
    "function_call": "assistant",
    "observation": "tool", "tool": "tool",
}  # fmt: skip
PLAIN_SHAREGPT = frozenset(SHAREGPT_ROLES) - {"function_call"}


def sharegpt_calls(value: str, field: str) -> list[ToolCall]:
    """A ShareGPT `function_call` turn: its value is JSON {name, arguments}, or a list of them (parallel calls)."""
    try:
        parsed = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise RowError(f"{field}: function_call value is not JSON {{name, arguments}} ({exc})", field) from exc
    calls = parsed if isinstance(parsed, list) else [parsed]
    if not calls:
        raise RowError(f"{field}: function_call value is an empty list", field)
    out: list[ToolCall] = []
    for j, call in enumerate(calls):
        where = f"{field}.value[{j}]" if isinstance(parsed, list) else f"{field}.value"
        call = need_dict(call, where)
        name = need_str(call.get("name"), f"{where}.name")
        out.append({"id": None, "name": name or "", "arguments": json_text(call.get("arguments", {}))})
    return out


def convert_sharegpt(row: Any, src: Source, opts: ReaderOptions) -> list[Record]:
    """ShareGPT row; a function_call turn becomes an assistant turn with its call(s), observation/tool a tool turn."""
    row = need_dict(row, "row")
    turns = need_list(row, "conversations", "turns")
    out: list[Message] = []
    system = need_str(row.get("system"), "system", optional=True)
    if system:
        out.append(message("system", system))
    for i, turn in enumerate(turns):
        if type(turn) is dict and type(turn.get("value")) is str and turn.get("from") in PLAIN_SHAREGPT:
            out.append(message(SHAREGPT_ROLES[turn["from"]], turn["value"]))  # fast path: a plain text turn
            continue
        field = f"conversations[{i}]"
        turn = need_dict(turn, field)
        who = turn.get("from")
        if who not in SHAREGPT_ROLES:
            raise RowError(
                f"turn {i + 1}: 'from' is {who!r}, expected one of {'/'.join(SHAREGPT_ROLES)}", f"{field}.from"
            )
        value = need_str(turn.get("value"), f"{field}.value") or ""
        if who == "function_call":
            out.append(message("assistant", "", tool_calls=sharegpt_calls(value, f"turn {i + 1}")))
        else:
            out.append(message(SHAREGPT_ROLES[who], value))
    if not out:
        raise RowError("'conversations' is empty", "conversations")
    category = row.get("category") if isinstance(row.get("category"), str) else opts.category
    return [
        make_record(out, source=src, tools=tools_text(row.get("tools"), "tools"), category=category,
                    meta=keep_meta(row, ("id",)))
    ]


# --- Instruction pairs: Alpaca, Dolly, self-instruct, GSM8K, generic prompt/response -------------

PROMPT_KEYS = ("instruction", "prompt", "question")
RESPONSE_KEYS = ("output", "response", "answer", "completion")
CATEGORY_KEYS = ("category", "motivation_app")
GSM8K_MARK = "\n#### "


def _first_key(row: dict[str, Any], keys: tuple[str, ...]) -> str | None:
    return next((k for k in keys if k in row), None)


def convert_pair(row: Any, src: Source, opts: ReaderOptions) -> list[Record]:
    """An instruction pair -> user turn (instruction, then input/context after a blank line) + assistant turn.

    Dolly's `context` also goes to `record.context` (the grounding passage); Alpaca's `input` does not,
    as it is usually part of the task, not a passage. Self-instruct `instances` give one record each.
    """
    row = need_dict(row, "row")
    pkey = _first_key(row, PROMPT_KEYS)
    if pkey is None:
        raise RowError(
            f"no prompt: expected one of {'/'.join(PROMPT_KEYS)} (keys are {sorted(row)[:12]}); "
            "for other columns set column_map (prompt: <column>)",
            "instruction",
        )
    prompt = need_str(row[pkey], pkey) or ""
    system = need_str(row.get("system"), "system", optional=True)
    history = _history(row.get("history"))
    ckey = _first_key(row, CATEGORY_KEYS)
    category = need_str(row[ckey], ckey, optional=True) if ckey else None
    meta = keep_meta(row, ("id", "name", "is_classification"))
    if "instances" in row:
        instances = row["instances"]
        if not isinstance(instances, list) or not instances:
            raise RowError(f"'instances' is {type_name(instances)}, expected a non-empty list", "instances")
        pairs = []
        for i, inst in enumerate(instances):
            inst = need_dict(inst, f"instances[{i}]")
            pairs.append((need_str(inst.get("input", ""), f"instances[{i}].input") or "",
                          need_str(inst.get("output"), f"instances[{i}].output") or ""))
    else:
        rkey = _first_key(row, RESPONSE_KEYS)
        if rkey is None:
            raise RowError(
                f"no response: expected one of {'/'.join(RESPONSE_KEYS)} (keys are {sorted(row)[:12]})", "output"
            )
        extra = need_str(row.get("input"), "input", optional=True) or ""
        pairs = [(extra, need_str(row[rkey], rkey) or "")]
        if rkey == "answer" and GSM8K_MARK in pairs[0][1] and category is None:
            category = "math"
    context = need_str(row.get("context"), "context", optional=True) or None
    records = []
    for i, (extra, answer) in enumerate(pairs):
        user = "\n\n".join(p for p in (prompt, extra, context or "") if p)
        msgs = [message("system", system)] if system else []
        msgs += [*history, message("user", user), message("assistant", answer)]
        source: Source = {**src, "path": f"instances/{i}"} if len(pairs) > 1 else src
        records.append(make_record(msgs, source=source, context=context, category=category or opts.category,
                                   meta=meta))
    return records


def _history(value: Any) -> list[Message]:
    """Alpaca-style `history`: [[instruction, response], ...] before the current pair."""
    if value in (None, []):
        return []
    if not isinstance(value, list):
        raise RowError(f"'history' is {type_name(value)}, expected a list of [prompt, response]", "history")
    out: list[Message] = []
    for i, pair in enumerate(value):
        if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(x, str) for x in pair)):
            raise RowError(f"'history[{i}]' is not a [prompt, response] pair of strings", f"history[{i}]")
        out += [message("user", pair[0]), message("assistant", pair[1])]
    return out
