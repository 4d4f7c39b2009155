"""Discord channel export written by DiscordChatExporter (JSON) -> one chat per file.

Shape (DiscordChatExporter's `JsonMessageWriter`): `guild`, `channel` (threads are exported as
their own channel file), `dateRange`, `exportedAt`, `messages[]`, `messageCount`. A message has
`id`, `type` (`Default`, `Reply`; anything else is a system notification: joins and recipient
changes are join/leave, pins, calls, boosts, thread creation and renames are system), `timestamp`
(ISO 8601 with offset), `content` (mentions already rendered as `@name` by the exporter; raw
`<@id>` tokens left by `--markdown false` are resolved from `mentions`), `author` (`name`,
`nickname`, `isBot`), `attachments`, `embeds`, `stickers`, `reactions`, `mentions`, and
`reference.messageId` for replies. Messages are streamed one by one: a truncated file keeps every
message before the damage.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import datetime
from typing import Any

from curator.ingest.base import Quarantined
from curator.ingest.chats.jsondoc import Element, Field, stream_document
from curator.ingest.chats.model import BOT, JOIN_LEAVE, MEDIA_ONLY, SYSTEM, Chat, ChatMessage, unique
from curator.ingest.chats.tree import ExportTree

TEXT_TYPES = frozenset(("Default", "Reply"))
JOIN_LEAVE_TYPES = frozenset(("RecipientAdd", "RecipientRemove", "GuildMemberJoin", "ThreadMemberJoin"))
MENTION = re.compile(r"<@!?(\d+)>|<#(\d+)>|<@&(\d+)>")


def looks_like_discord(keys: set[str]) -> bool:
    """DiscordChatExporter's top-level keys."""
    return {"guild", "channel", "messages"} <= keys


def _person(author: Any) -> tuple[str, str, tuple[str, ...], bool]:
    """(display name, id, names, is bot) of an author or mention object."""
    if not isinstance(author, dict):
        return "", "", (), False
    nickname, name = author.get("nickname"), author.get("name")
    names = unique([n for n in (nickname, name) if isinstance(n, str)])
    display = names[0] if names else ""
    return display, str(author.get("id") or display), tuple(names), bool(author.get("isBot"))


def _timestamp(value: Any) -> float | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def _message(obj: Any, shown: str) -> ChatMessage | str:
    """One message, or why it cannot be read."""
    if not isinstance(obj, dict):
        return f"message is {type(obj).__name__}, expected an object"
    ts = _timestamp(obj.get("timestamp"))
    if ts is None:
        return f"'timestamp' is {obj.get('timestamp')!r}, expected ISO 8601 like 2023-01-15T10:30:00+00:00"
    content = obj.get("content")
    if content is not None and not isinstance(content, str):
        return f"'content' is {type(content).__name__}, expected a string"
    sender, sender_id, names, is_bot = _person(obj.get("author"))
    people = {}
    for m in obj.get("mentions") or []:
        display, pid, pnames, _ = _person(m)
        if display:
            people[pid] = (display, pnames)
    mentioned: list[str] = [n for _, pnames in people.values() for n in pnames]

    def mention(m: re.Match[str]) -> str:
        if m.group(1):
            return f"@{people.get(m.group(1), (m.group(1),))[0]}"
        return "#channel" if m.group(2) else "@role"

    text = MENTION.sub(mention, content or "")
    kind = obj.get("type", "Default")
    drop = None
    if kind in JOIN_LEAVE_TYPES:
        drop = JOIN_LEAVE
    elif kind not in TEXT_TYPES:
        drop = SYSTEM
    elif is_bot:
        drop = BOT
    elif not text.strip() and (obj.get("attachments") or obj.get("stickers") or obj.get("embeds")):
        drop = MEDIA_ONLY
    ref = obj.get("reference")
    reply_to = str(ref["messageId"]) if isinstance(ref, dict) and ref.get("messageId") else None
    return ChatMessage(
        id=str(obj.get("id")), sender=sender, sender_id=sender_id, ts=ts, text=text, reply_to=reply_to, drop=drop,
        file=shown, names=names, mentioned=tuple(unique(mentioned)),
    )


def read_discord(tree: ExportTree) -> Iterator[Chat | Quarantined]:
    """Every DiscordChatExporter JSON file of the export as one chat."""
    names = tree.names() if not tree.is_single_file else tree.names()[:1]
    for name in names:
        if not name.lower().endswith(".json") and not tree.is_single_file:
            continue
        shown = tree.display(name)
        chat = Chat("discord", "", None, shown)
        with tree.open(name) as fh:
            for part in stream_document(fh, shown, ("messages.item",)):
                if isinstance(part, Field):
                    if part.key == "channel" and isinstance(part.value, dict):
                        chat.chat_id = str(part.value.get("id") or "")
                        cname = part.value.get("name")
                        chat.title = f"#{cname}" if isinstance(cname, str) else None
                elif isinstance(part, Element):
                    msg = _message(part.item.obj, shown)
                    if isinstance(msg, str):
                        chat.malformed += 1
                        yield Quarantined.of(shown, f"message {part.item.index}: {msg}", index=part.item.index,
                                             raw=repr(part.item.obj)[:800])
                    else:
                        chat.messages.append(msg)
                else:
                    chat.malformed += 1
                    yield part
        chat.chat_id = chat.chat_id or shown
        yield chat
