"""ChatGPT data export: one conversation (a `mapping` node tree) -> one record.

The conversation the user last saw is the branch from `current_node` up to the root, reversed.
Exports over the years differ in how the tree is linked and typed, so the reader takes:
- links from `parent` and from `children` (either may be missing; the tree is their union), and
  a root whose `parent` names a node outside the mapping (a placeholder id) as the root;
- without `current_node` (or with one outside the mapping), the newest leaf (latest message
  `create_time`, then the last in mapping order), said so in `meta.branch`; a walk never loops:
  a cycle of links is a quarantine reason, not a hang;
- content with `parts` but no `content_type`, or a plain string, as text.
Choices (where the export format leaves room):
- turns are not merged: consecutive assistant nodes (text, then a code tool call) stay separate
  turns, as ChatGPT produced them;
- nodes with `message: null`, visually hidden nodes and empty text nodes without tool calls (export
  artefacts such as the blank root system message) are skipped and counted in meta;
- `thoughts` / `reasoning_recap` are dropped and counted; non-text parts (image/audio pointers) are
  skipped and counted; custom instructions (`user_editable_context`, or the 2023 shape in a system
  message's `user_context_message_data`) become a system turn;
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
    if kind is None and "parts" in content:
        kind = "text"  # exports (and exporters) that give `parts` without a content_type
    if kind is None and isinstance(content.get("text"), str):
        return content["text"]
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


def _message_time(node: dict[str, Any]) -> float:
    """The node's message create (else update) time, -inf when it has none: orders leaves by age."""
    msg = node.get("message")
    if isinstance(msg, dict):
        for key in ("create_time", "update_time"):
            t = msg.get(key)
            if isinstance(t, int | float) and not isinstance(t, bool):
                return float(t)
    return float("-inf")


def _parents(mapping: dict[str, Any]) -> dict[str, str]:
    """Each node's parent: its own `parent` link, else the node whose `children` name it.

    Exports have carried both links, or only one of them (some only `parent`, some only
    `children`), so the tree is the union; links to nodes outside the mapping are ignored.
    """
    parents: dict[str, str] = {}
    for key, node in mapping.items():
        parent = node.get("parent") if isinstance(node, dict) else None
        if isinstance(parent, str) and parent in mapping and parent != key:
            parents[key] = parent
    for key, node in mapping.items():
        children = node.get("children") if isinstance(node, dict) else None
        for child in children if isinstance(children, list) else ():
            if isinstance(child, str) and child in mapping and child != key:
                parents.setdefault(child, key)
    return parents


def _branch(conv: dict[str, Any], meta: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(id, node) from the root to `current_node` (else the newest leaf, noted in `meta`), via parents.

    Every walk is bounded by the nodes it has seen, so no shape of links can loop.
    """
    mapping = conv.get("mapping")
    if not isinstance(mapping, dict) or not mapping:
        raise RowError(f"'mapping' is {type_name(mapping)}, expected the node tree of a conversation", "mapping")
    parents = _parents(mapping)
    node_id = conv.get("current_node")
    if not (isinstance(node_id, str) and node_id in mapping):
        has_child = set(parents.values())
        leaves = [(_message_time(n) if isinstance(n, dict) else float("-inf"), i, k)
                  for i, (k, n) in enumerate(mapping.items()) if k not in has_child]
        if not leaves:
            raise RowError("no leaf node: every node has a child, so the links form a cycle", "mapping")
        node_id = max(leaves)[2]
        why = "no current_node" if conv.get("current_node") is None else "current_node is not in the mapping"
        meta["branch"] = f"newest leaf ({why}; {len(leaves)} leaves)"
    path: list[tuple[str, dict[str, Any]]] = []
    seen: set[str] = set()
    while node_id is not None:
        if node_id in seen:
            raise RowError(f"node {node_id!r}: the parent links form a cycle", "mapping")
        seen.add(node_id)
        node = need_dict(mapping[node_id], f"mapping[{node_id!r}]")
        path.append((node_id, node))
        node_id = parents.get(node_id)
    top = path[-1][1].get("parent")
    if isinstance(top, str) and top not in mapping:
        meta["root_parent_missing"] = top  # exports give some roots a placeholder parent id
    return path[::-1]


def _custom_instructions(msg: dict[str, Any]) -> str:
    """Custom instructions kept in a system message's metadata (exports of 2023), or ""."""
    data = (msg.get("metadata") or {}).get("user_context_message_data")
    if not isinstance(data, dict):
        return ""
    parts = [data.get("about_user_message"), data.get("about_model_message")]
    return "\n\n".join(p for p in parts if isinstance(p, str) and p)


def convert_chatgpt(conv: Any, src: Source, opts: ReaderOptions) -> list[Record]:
    """One exported ChatGPT conversation -> one record of its current branch."""
    conv = need_dict(conv, "conversation")
    counts: dict[str, int] = {}
    meta: dict[str, Any] = {}
    msgs: list[Message] = []
    ids = []
    for node_id, node in _branch(conv, meta):
        msg = node.get("message")
        if msg is None:
            counts["null_nodes"] = counts.get("null_nodes", 0) + 1
            continue
        msg = need_dict(msg, f"node {node_id}: message")
        instructions = _custom_instructions(msg)
        if instructions:
            msgs.append(message("system", instructions))
            ids.append(node_id)
            continue
        if (msg.get("metadata") or {}).get("is_visually_hidden_from_conversation"):
            counts["hidden_nodes"] = counts.get("hidden_nodes", 0) + 1
            continue
        author = need_dict(msg.get("author"), f"node {node_id}: author")
        role = author.get("role")
        if role not in ROLE_MAP:
            raise RowError(f"node {node_id}: author role is {role!r}, expected one of {'/'.join(ROLE_MAP)}",
                           "author.role")
        raw = msg.get("content")
        content = {"content_type": "text", "parts": [raw]} if isinstance(raw, str) else \
            need_dict(raw, f"node {node_id}: content")
        text = content_text(content, counts)
        if text is None:
            continue
        if content.get("content_type") == "user_editable_context":
            role = "system"
        recipient = msg.get("recipient") or "all"
        if role == "assistant" and recipient != "all":
            turn = message("assistant", "", tool_calls=[{"id": None, "name": str(recipient), "arguments": text}])
        elif role == "tool":
            name = author.get("name")
            turn = message("tool", text, name=name if isinstance(name, str) else None)
        elif not text:
            counts["empty_nodes"] = counts.get("empty_nodes", 0) + 1
            continue
        else:
            turn = message(ROLE_MAP[role], text)
        msgs.append(turn)
        ids.append(node_id)
    if not msgs:
        raise RowError("the current branch has no visible message", "mapping")
    meta.update({k: conv[k] for k in ("title", "create_time", "update_time") if conv.get(k) is not None})
    meta["conversation_id"] = conv.get("conversation_id") or conv.get("id")
    meta.update(counts)
    source: Source = {**src, "path": "/".join(ids)}
    return [make_record(msgs, source=source, category=opts.category, meta=meta)]
