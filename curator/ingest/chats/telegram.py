"""Telegram Desktop "Export chat history" / "Export Telegram data" in machine-readable JSON -> chats.

Two shapes of `result.json`: one chat (`name`, `type`, `id`, `messages[]`), or the whole account
(`about`, `personal_information`, ..., `chats.list[]` and `left_chats.list[]`, each a chat of that
shape), streamed chat by chat. A message has `id`, `type` (`message`, or `service` with an
`action`: invites, joins and removals are join/leave, the rest system), `date` (local ISO time) and
`date_unixtime`, `from`/`from_id`, `reply_to_message_id`, `text` (a string, or a list of strings
and entity parts `{type, text}`, where `mention_name` parts carry a display name), `via_bot`
(bot output) and media fields (`photo`, `file`, `media_type`, `sticker_emoji`, `poll`, ...):
media with no text (no caption) is media-only.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from curator.ingest.base import Quarantined
from curator.ingest.chats.jsondoc import Element, Field, stream_document
from curator.ingest.chats.model import BOT, JOIN_LEAVE, MEDIA_ONLY, SYSTEM, Chat, ChatMessage, unique
from curator.ingest.chats.tree import ExportTree, basename

JOIN_LEAVE_ACTIONS = frozenset((
    "invite_members", "remove_members", "join_group_by_link", "join_group_by_request", "create_group",
    "create_channel", "migrate_to_supergroup", "migrate_from_group",
))  # fmt: skip
MEDIA_KEYS = ("photo", "file", "media_type", "sticker_emoji", "poll", "contact_information", "location_information",
              "place_name", "game_title", "invoice_information")
ACCOUNT_KEYS = frozenset(("personal_information", "chats", "left_chats", "contacts", "frequent_contacts",
                          "profile_pictures", "other_data"))
ARRAYS = ("messages.item", "chats.list.item", "left_chats.list.item")


def looks_like_telegram(keys: set[str], first_message: set[str]) -> bool:
    """A single-chat result.json (messages with from/date) or a whole-account export (about + chats...)."""
    if "about" in keys and keys & ACCOUNT_KEYS:
        return True
    return "messages" in keys and ("type" in keys or "name" in keys) and (
        not first_message or (bool(first_message & {"date", "date_unixtime"}) and "type" in first_message)
    )


def text_of(value: Any, mentioned: list[str]) -> str | None:
    """`text` as plain text (entity parts joined); None when it is not a string or a list of parts."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if not isinstance(value, list):
        return None
    out = []
    for part in value:
        if isinstance(part, str):
            out.append(part)
        elif isinstance(part, dict) and isinstance(part.get("text"), str):
            if part.get("type") in ("mention", "mention_name"):
                mentioned.append(part["text"].lstrip("@"))
            out.append(part["text"])
        else:
            return None
    return "".join(out)


def _timestamp(obj: dict[str, Any]) -> float | None:
    unix = obj.get("date_unixtime")
    if isinstance(unix, (str, int)) and str(unix).isdigit():
        return float(unix)
    date = obj.get("date")
    if isinstance(date, str):
        try:
            return datetime.fromisoformat(date).replace(tzinfo=UTC).timestamp()
        except ValueError:
            return None
    return None


def _message(obj: Any, shown: str) -> ChatMessage | str:
    """One message, or why it cannot be read."""
    if not isinstance(obj, dict):
        return f"message is {type(obj).__name__}, expected an object"
    ts = _timestamp(obj)
    if ts is None:
        return f"'date' is {obj.get('date')!r} and 'date_unixtime' {obj.get('date_unixtime')!r}: no usable time"
    mentioned: list[str] = []
    text = text_of(obj.get("text"), mentioned)
    if text is None:
        return f"'text' is {type(obj.get('text')).__name__}, expected a string or a list of text parts"
    service = obj.get("type") == "service"
    sender = obj.get("actor" if service else "from") or ""
    sender_id = obj.get("actor_id" if service else "from_id") or ""
    drop = None
    if service:
        drop = JOIN_LEAVE if obj.get("action") in JOIN_LEAVE_ACTIONS else SYSTEM
    elif obj.get("via_bot"):
        drop = BOT
    elif not text.strip() and any(k in obj for k in MEDIA_KEYS):
        drop = MEDIA_ONLY
    reply = obj.get("reply_to_message_id")
    return ChatMessage(
        id=str(obj.get("id")), sender=str(sender), sender_id=str(sender_id), ts=ts, text=text,
        reply_to=str(reply) if reply is not None else None, drop=drop, file=shown,
        mentioned=tuple(unique(mentioned)),
    )


def _add(chat: Chat, obj: Any, index: int, shown: str) -> Quarantined | None:
    msg = _message(obj, shown)
    if isinstance(msg, str):
        chat.malformed += 1
        return Quarantined.of(shown, f"chat {chat.chat_id}, message {index}: {msg}", index=index, raw=repr(obj)[:800])
    chat.messages.append(msg)
    return None


def _finish(chat: Chat) -> Chat:
    chat.roster = unique([m.sender for m in chat.messages if m.sender and not m.drop])
    return chat


def _chat_of(obj: Any, shown: str) -> Iterator[Chat | Quarantined]:
    """A chat object of a whole-account export (`chats.list[i]`)."""
    if not isinstance(obj, dict) or not isinstance(obj.get("messages"), list):
        yield Quarantined.of(shown, "a chat in 'chats.list' has no 'messages' list", raw=repr(obj)[:800])
        return
    chat = Chat("telegram", str(obj.get("id") or ""), obj.get("name") if isinstance(obj.get("name"), str) else None,
                shown)
    for i, m in enumerate(obj["messages"]):
        bad = _add(chat, m, i, shown)
        if bad is not None:
            yield bad
    yield _finish(chat)


def read_telegram(tree: ExportTree) -> Iterator[Chat | Quarantined]:
    """The chats of a Telegram export: `result.json` (the file itself, or the shallowest in a zip/dir)."""
    if tree.is_single_file:
        name = tree.names()[0]
    else:
        found = sorted((n for n in tree.names() if basename(n) == "result.json"), key=lambda n: (n.count("/"), n))
        if not found:
            yield Quarantined.of(tree.shown, "no result.json in this Telegram export")
            return
        name = found[0]
    shown = tree.display(name)
    single = Chat("telegram", "", None, shown)
    with tree.open(name) as fh:
        for part in stream_document(fh, shown, ARRAYS):
            if isinstance(part, Field):
                if part.key == "id":
                    single.chat_id = str(part.value)
                elif part.key == "name" and isinstance(part.value, str):
                    single.title = part.value
            elif isinstance(part, Element) and part.prefix == "messages.item":
                bad = _add(single, part.item.obj, part.item.index, shown)
                if bad is not None:
                    yield bad
            elif isinstance(part, Element):
                yield from _chat_of(part.item.obj, shown)
            else:
                single.malformed += 1
                yield part
    if single.messages or single.malformed or single.chat_id:
        single.chat_id = single.chat_id or shown
        yield _finish(single)
