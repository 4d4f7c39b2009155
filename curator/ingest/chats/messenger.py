"""Facebook Messenger and Instagram "Download your information" (JSON) -> one chat per conversation folder.

Layout: `[your_facebook_activity/|your_instagram_activity/]messages/<inbox|archived_threads|
filtered_threads|message_requests|e2ee_cutover>/<thread>/message_<n>.json`; a long conversation is
split over `message_1.json`, `message_2.json`, ... in one folder, read together as one chat (a
single `message_1.json` file is read on its own). Each file: `participants[{name}]`, `title`,
`messages[]` newest first with `sender_name`, `timestamp_ms`, `content`, `photos`/`videos`/
`audio_files`/`gifs`/`files`/`sticker`/`share`, `reactions`, `type` (`Generic`, `Share`, `Call`,
`Subscribe`/`Unsubscribe`: joins and leaves) and `is_unsent`.

Meta writes UTF-8 bytes as if each byte were a Latin-1 character (`\\u00c3\\u00a9` for `é`);
`fix_mojibake` reverses that for every string (a string that is not such a sequence is kept).
Generated notices ("X sent an attachment.", "Reacted ❤ to your message", "X named the group ...",
"You are now connected on Messenger") are media-only, reactions, joins/leaves or system.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

from curator.ingest.base import Quarantined
from curator.ingest.chats.jsondoc import Element, Field, stream_document
from curator.ingest.chats.model import DELETED, JOIN_LEAVE, MEDIA_ONLY, REACTION, SYSTEM, Chat, ChatMessage, unique
from curator.ingest.chats.tree import ExportTree, basename, parent

MESSAGE_FILE = re.compile(r"^message_(\d+)\.json$")
MEDIA_KEYS = ("photos", "videos", "audio_files", "gifs", "files", "sticker")
REACTION_TEXT = re.compile(r"^(?:.{1,80} )?(?:reacted .{1,12} to (?:your|a) message|liked a message)\.?$", re.I | re.S)
MEDIA_TEXT = re.compile(r"^.{1,80} sent (?:an attachment|a photo|a video|a voice message|a sticker|a gif|a link)\.$",
                        re.I)
JOIN_LEAVE_TEXT = re.compile(r"^.{1,80} (?:added .{1,80} to the group|left the group|removed .{1,80} from the group|"
                             r"joined the (?:group|video chat|call))\.?$", re.I)
SYSTEM_TEXT = re.compile(
    r"^(?:.{1,80} (?:named the group|changed the group photo|set the nickname for|set (?:your|his|her|their) "
    r"nickname to|cleared the nickname|changed the chat theme|set the emoji to|started a (?:video )?call|"
    r"started sharing video|missed a (?:video )?call|created the group|turned on|turned off|pinned a message|"
    r"unsent a message)|you are now connected on messenger|say hi to your new facebook friend|"
    r"you can now message and call each other)",
    re.I,
)


def fix_mojibake(text: str) -> str:
    """Undo Meta's UTF-8-as-Latin-1 escaping ('Ã©' -> 'é'); text that is not such a sequence is returned as is."""
    try:
        return text.encode("latin-1").decode("utf-8")
    except (UnicodeEncodeError, UnicodeDecodeError):
        return text


def looks_like_messenger(keys: set[str], first_message: set[str]) -> bool:
    """A Messenger/Instagram message_N.json: participants + messages with sender_name/timestamp_ms."""
    return {"participants", "messages"} <= keys and (
        not first_message or bool(first_message & {"sender_name", "timestamp_ms"})
    )


def conversation_files(names: list[str]) -> dict[str, list[str]]:
    """message_N.json members by conversation folder, each folder's files in N order."""
    out: dict[str, list[str]] = {}
    for n in names:
        m = MESSAGE_FILE.match(basename(n))
        if m:
            out.setdefault(parent(n), []).append(n)
    for files in out.values():
        files.sort(key=lambda n: int(MESSAGE_FILE.match(basename(n)).group(1)))  # type: ignore[union-attr]
    return dict(sorted(out.items()))


def _fixed(value: Any) -> str:
    return fix_mojibake(value) if isinstance(value, str) else ""


def _message(obj: Any, shown: str, index: int) -> ChatMessage | str:
    """One message, or why it cannot be read."""
    if not isinstance(obj, dict):
        return f"message is {type(obj).__name__}, expected an object"
    ms = obj.get("timestamp_ms")
    if not isinstance(ms, (int, float)) or isinstance(ms, bool):
        return f"'timestamp_ms' is {ms!r}, expected milliseconds since the epoch"
    content = obj.get("content")
    if content is not None and not isinstance(content, str):
        return f"'content' is {type(content).__name__}, expected a string"
    sender = _fixed(obj.get("sender_name"))
    text = _fixed(content)
    kind = obj.get("type")
    drop = None
    if obj.get("is_unsent"):
        drop = DELETED
    elif kind in ("Subscribe", "Unsubscribe") or JOIN_LEAVE_TEXT.match(text):
        drop = JOIN_LEAVE
    elif kind == "Call" or SYSTEM_TEXT.match(text):
        drop = SYSTEM
    elif REACTION_TEXT.match(text):
        drop = REACTION
    elif MEDIA_TEXT.match(text) or (not text.strip() and (any(obj.get(k) for k in MEDIA_KEYS) or obj.get("share"))):
        drop = MEDIA_ONLY
    return ChatMessage(id=f"{int(ms)}-{index}", sender=sender, sender_id="", ts=ms / 1000.0, text=text, drop=drop,
                       file=shown)


def read_messenger(tree: ExportTree) -> Iterator[Chat | Quarantined]:
    """Every conversation folder (or the single message_N.json) of a Messenger/Instagram export."""
    groups = {"": tree.names()} if tree.is_single_file else conversation_files(tree.names())
    if not groups:
        yield Quarantined.of(tree.shown, "no messages/.../message_1.json in this Messenger/Instagram export")
        return
    for folder, files in groups.items():
        chat = Chat("messenger", folder or tree.shown, None, tree.display(files[0]))
        roster: list[str] = []
        for name in files:
            shown = tree.display(name)
            with tree.open(name) as fh:
                for part in stream_document(fh, shown, ("messages.item",)):
                    if isinstance(part, Field):
                        if part.key == "title" and isinstance(part.value, str):
                            chat.title = fix_mojibake(part.value)
                        elif part.key == "participants" and isinstance(part.value, list):
                            roster += [_fixed(p.get("name")) for p in part.value if isinstance(p, dict)]
                    elif isinstance(part, Element):
                        msg = _message(part.item.obj, shown, part.item.index)
                        if isinstance(msg, str):
                            chat.malformed += 1
                            yield Quarantined.of(shown, f"message {part.item.index}: {msg}", index=part.item.index,
                                                 raw=repr(part.item.obj)[:800])
                        else:
                            msg.id = f"{basename(name)}:{msg.id}"
                            chat.messages.append(msg)
                    else:
                        chat.malformed += 1
                        yield part
        chat.roster = unique(roster + [m.sender for m in chat.messages if m.sender])
        yield chat
