"""ChatGPT data export: one conversation (a `mapping` node tree with `current_node`) -> one record.

The conversation the user last saw is the branch from `current_node` up through `parent` to the
root, reversed. Choices (where the export format leaves room):
- turns are not merged: consecutive assistant nodes (text, then a code tool call) stay separate
  turns, as ChatGPT produced them;
- nodes with `message: null`, visually hidden nodes and empty text nodes without tool calls (export
  artefacts such as the blank root system message) are skipped and counted in meta;
- `thoughts` / `reasoning_recap` are dropped and counted; non-text parts (image/audio pointers) are
  skipped and counted; `user_editable_context` (custom instructions) becomes a system turn;
- an assistant message whose `recipient` is not `all` is a tool call {name: recipient, arguments:
  the message text as given}; a `tool` author becomes a tool turn named after the tool.
"""

from __future__ import annotations

from typing import Any

from curator.ingest.base import ReaderOptions
from curator.ingest.convert import RowError, need_dict, type_name
from curator.record import Message, Record, Source, make_record, message

DROPPED_TYPES = ("thoughts", "reasoning_recap")
ROLE_MAP = {"user": "user", "assistant": "assistant", "system": "system", "tool": "tool"}


def _parts_text(parts: Any, counts: dict[str, int]) -> str:
    """Text of `parts`: strings kept, asset pointers skipped and counted, transcripts kept."""
    if not isinstance(parts, list):
        return ""
    texts = []
    for part in parts:
        if isinstance(part, str):
            texts.append(part)
        elif isinstance(part, dict) and isinstance(part.get("text"), str):
            texts.append(part["text"])  # e.g. audio_transcription
        else:
            kind = part.get("content_type", "object") if isinstance(part, dict) else type_name(part)
            counts[f"skipped_{kind}"] = counts.get(f"skipped_{kind}", 0) + 1
    return "\n".join(t for t in texts if t)


def content_text(content: dict[str, Any], counts: dict[str, int]) -> str | None:
    """Text of a message's `content` by `content_type`, or None when the node is to be dropped."""
    kind = content.get("content_type")
    if kind in ("text", "multimodal_text"):
        return _parts_text(content.get("parts"), counts)
    if kind in ("code", "execution_output", "tether_quote", "system_error", "computer_output"):
        return str(content.get("text") or "")
    if kind == "tether_browsing_display":
        return str(content.get("result") or content.get("summary") or "")
    if kind == "user_editable_context":
        parts = [content.get("user_profile"), content.get("user_instructions")]
        return "\n\n".join(p for p in parts if isinstance(p, str) and p)
    key = f"dropped_{kind}" if kind in DROPPED_TYPES else f"skipped_content_type_{kind}"
    counts[key] = counts.get(key, 0) + 1
    return None


def _branch(conv: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(id, node) from the root to `current_node`, following `parent` links (cycles are an error)."""
    mapping = conv.get("mapping")
    if not isinstance(mapping, dict) or not mapping:
        raise RowError(f"'mapping' is {type_name(mapping)}, expected the node tree of a conversation", "mapping")
    node_id = conv.get("current_node")
    if node_id not in mapping:
        # Older exports lack current_node: the deepest leaf reached by following the last child wins.
        node_id = next((k for k, n in mapping.items() if isinstance(n, dict) and n.get("parent") is None), None)
        while node_id in mapping and (mapping[node_id].get("children") or []):
            node_id = mapping[node_id]["children"][-1]
        if node_id not in mapping:
            raise RowError("'current_node' is missing and no root node was found", "current_node")
    path = []
    seen = set()
    while node_id is not None:
        if node_id in seen:
            raise RowError(f"node {node_id!r}: the parent links form a cycle", "mapping")
        node = need_dict(mapping.get(node_id), f"mapping[{node_id!r}]")
        seen.add(node_id)
        path.append((node_id, node))
        node_id = node.get("parent")
        if node_id is not None and node_id not in mapping:
            raise RowError(f"node {path[-1][0]!r}: parent {node_id!r} is not in the mapping", "mapping")
    return path[::-1]


def convert_chatgpt(conv: Any, src: Source, opts: ReaderOptions) -> list[Record]:
    """One exported ChatGPT conversation -> one record of its current branch."""
    conv = need_dict(conv, "conversation")
    counts: dict[str, int] = {}
    msgs: list[Message] = []
    ids = []
    for node_id, node in _branch(conv):
        msg = node.get("message")
        if msg is None:
            counts["null_nodes"] = counts.get("null_nodes", 0) + 1
            continue
        msg = need_dict(msg, f"node {node_id}: message")
        if (msg.get("metadata") or {}).get("is_visually_hidden_from_conversation"):
            counts["hidden_nodes"] = counts.get("hidden_nodes", 0) + 1
            continue
        author = need_dict(msg.get("author"), f"node {node_id}: author")
        role = author.get("role")
        if role not in ROLE_MAP:
            raise RowError(f"node {node_id}: author role is {role!r}, expected one of {'/'.join(ROLE_MAP)}",
                           "author.role")
        content = need_dict(msg.get("content"), f"node {node_id}: content")
        text = content_text(content, counts)
        if text is None:
            continue
        if content.get("content_type") == "user_editable_context":
            role = "system"
        recipient = msg.get("recipient") or "all"
        if role == "assistant" and recipient != "all":
            turn = message("assistant", "", tool_calls=[{"id": None, "name": str(recipient), "arguments": text}])
        elif role == "tool":
            turn = message("tool", text, name=author.get("name"))
        elif not text:
            counts["empty_nodes"] = counts.get("empty_nodes", 0) + 1
            continue
        else:
            turn = message(ROLE_MAP[role], text)
        msgs.append(turn)
        ids.append(node_id)
    if not msgs:
        raise RowError("the current branch has no visible message", "mapping")
    meta = {k: conv[k] for k in ("title", "create_time", "update_time") if conv.get(k) is not None}
    meta["conversation_id"] = conv.get("conversation_id") or conv.get("id")
    meta.update(counts)
    source: Source = {**src, "path": "/".join(ids)}
    return [make_record(msgs, source=source, category=opts.category, meta=meta)]
