"""Claude.ai data export: one conversation ({uuid, name, chat_messages: [...]}) -> one record.

Each chat message has `sender` (human | assistant), `text`, and usually `content` blocks. Content
blocks are preferred when present: text -> turn text, tool_use -> assistant tool call (id, name,
input as JSON text), tool_result -> a tool turn that ends the turn before it (text after a tool
result becomes a new assistant turn, keeping the order), thinking -> dropped (counted in meta).
Choice: an attachment's `extracted_content` is appended to its user turn after a blank line, headed
by the file name, because the assistant's reply depends on it and a record has one `context` only.
Attachments without extracted text (`files`: images, PDFs not extracted) are counted in meta.
"""

from __future__ import annotations

import json
from typing import Any

from curator.ingest.base import ReaderOptions
from curator.ingest.convert import RowError, json_text, need_dict, need_str, type_name
from curator.record import Message, Record, Source, make_record, message

SENDERS = {"human": "user", "user": "user", "assistant": "assistant"}


def _result_text(content: Any) -> str:
    """A tool_result's content: a string, or a list of blocks whose text parts are joined."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(b["text"] for b in content if isinstance(b, dict) and isinstance(b.get("text"), str))
    return "" if content is None else json.dumps(content, ensure_ascii=False, sort_keys=True)


def _turns(role: str, blocks: list[Any], field: str, counts: dict[str, int], extra: list[str]) -> list[Message]:
    """The turns of one message's content blocks, in order: a tool_result closes the turn before it."""
    turns: list[Message] = []
    texts: list[str] = []
    calls: list[Any] = []

    def flush() -> None:
        if texts or calls:
            turns.append(message(role, "\n\n".join(t for t in texts if t), tool_calls=list(calls) or None))
        texts.clear()
        calls.clear()

    for j, block in enumerate(blocks):
        block = need_dict(block, f"{field}[{j}]")
        kind = block.get("type")
        if kind == "text":
            texts.append(need_str(block.get("text"), f"{field}[{j}].text") or "")
        elif kind == "tool_use":
            name = need_str(block.get("name"), f"{field}[{j}].name") or ""
            calls.append({"id": block.get("id"), "name": name, "arguments": json_text(block.get("input", {}))})
        elif kind == "tool_result":
            flush()
            turns.append(message("tool", _result_text(block.get("content")), name=block.get("name"),
                                 tool_call_id=block.get("tool_use_id")))
        else:
            key = "dropped_thinking" if kind in ("thinking", "redacted_thinking") else f"skipped_block_{kind}"
            counts[key] = counts.get(key, 0) + 1
    texts.extend(extra)
    flush()
    if not turns:  # a message with only thinking blocks, or nothing: keep an empty turn for the quality step
        turns.append(message(role, ""))
    return turns


def _attachments(msg: dict[str, Any], field: str, counts: dict[str, int]) -> list[str]:
    """Extracted text of a message's attachments, each headed by its file name."""
    out = []
    for j, att in enumerate(msg.get("attachments") or []):
        att = need_dict(att, f"{field}.attachments[{j}]")
        text = att.get("extracted_content")
        if isinstance(text, str) and text:
            out.append(f"[{att.get('file_name') or 'attachment'}]\n{text}")
        else:
            counts["attachments_without_text"] = counts.get("attachments_without_text", 0) + 1
    counts_files = len(msg.get("files") or [])
    if counts_files:
        counts["files"] = counts.get("files", 0) + counts_files
    return out


def convert_claude(conv: Any, src: Source, opts: ReaderOptions) -> list[Record]:
    """One exported Claude.ai conversation -> one record (turns in export order)."""
    conv = need_dict(conv, "conversation")
    chat = conv.get("chat_messages")
    if not isinstance(chat, list):
        raise RowError(f"'chat_messages' is {type_name(chat)}, expected a list of messages", "chat_messages")
    msgs: list[Message] = []
    counts: dict[str, int] = {}
    for i, msg in enumerate(chat):
        field = f"chat_messages[{i}]"
        msg = need_dict(msg, field)
        sender = msg.get("sender")
        if sender not in SENDERS:
            raise RowError(f"message {i + 1}: 'sender' is {sender!r}, expected human or assistant", f"{field}.sender")
        role = SENDERS[sender]
        extra = _attachments(msg, field, counts) if role == "user" else []
        blocks = msg.get("content")
        if not (isinstance(blocks, list) and blocks):
            blocks = [{"type": "text", "text": need_str(msg.get("text", ""), f"{field}.text") or ""}]
        msgs += _turns(role, blocks, f"{field}.content", counts, extra)
    if not msgs:
        raise RowError("'chat_messages' is empty", "chat_messages")
    meta: dict[str, Any] = {k: conv[k] for k in ("uuid", "name", "created_at", "updated_at") if conv.get(k)}
    meta.update(counts)
    return [make_record(msgs, source=src, category=opts.category, meta=meta)]
