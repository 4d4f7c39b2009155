"""Slack workspace export (the `.zip` or its unzipped directory) -> one chat per channel, group or DM.

Layout (Slack's "Export your workspace data"): `users.json` and `channels.json` at the root, with
`groups.json` (private channels), `dms.json` and `mpims.json` when the export includes them; one
folder per conversation (channels, groups and group DMs by name, DMs by id) holding a JSON array
of messages per day (`2023-01-31.json`). The whole export is one input; a folder that no metadata
file lists is still read, named by its folder.

Messages: `user`, `ts` (the message id), `thread_ts` (a thread is its own session), `subtype`
(joins/leaves, bot messages, topic/purpose/pins, tombstones of deleted parents), `files`
(a message with files and no text is media-only), `<@U123>` mentions resolved to display names
(`profile.display_name`, then real name, then the handle), `<#C123|name>` channels, `<!here>`
specials and `<url|label>` links, and `&amp; &lt; &gt;` unescaped as Slack escapes only those.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

from curator.ingest.base import Quarantined, ReaderOptions
from curator.ingest.chats.model import BOT, DELETED, JOIN_LEAVE, MEDIA_ONLY, SYSTEM, Chat, ChatMessage, unique
from curator.ingest.chats.tree import ExportTree, basename, parent
from curator.ingest.sources import Item, iter_json_items

META_FILES = ("channels.json", "groups.json", "mpims.json", "dms.json")
JOIN_LEAVE_SUBTYPES = frozenset((
    "channel_join", "channel_leave", "group_join", "group_leave", "app_conversation_join", "bot_add", "bot_remove",
))  # fmt: skip
SYSTEM_SUBTYPES = frozenset((
    "channel_topic", "channel_purpose", "channel_name", "channel_archive", "channel_unarchive", "group_topic",
    "group_purpose", "group_name", "group_archive", "group_unarchive", "pinned_item", "unpinned_item",
    "reminder_add", "huddle_thread", "sh_room_created", "channel_convert_to_private", "channel_canvas_updated",
    "channel_posting_permissions", "joiner_notification", "ekm_access_denied",
))  # fmt: skip
BOT_SUBTYPES = frozenset(("bot_message", "slackbot_response"))
DELETED_SUBTYPES = frozenset(("tombstone", "message_deleted"))
TOKEN = re.compile(r"<([^<>]+)>")
DAY_FILE = re.compile(r"^\d{4}-\d{2}-\d{2}\.json$")


def slack_root(names: list[str]) -> str | None:
    """The folder ('' or 'x/') holding users.json and channels.json, shallowest first, or None."""
    present = set(names)
    roots = sorted((parent(n) for n in names if basename(n) == "users.json"), key=lambda p: (p.count("/"), p))
    for root in roots:
        prefix = f"{root}/" if root else ""
        if f"{prefix}channels.json" in present:
            return prefix
    return None


class _People:
    """Slack users by id: display name, other names, bot flag."""

    def __init__(self) -> None:
        self.display: dict[str, str] = {}
        self.names: dict[str, tuple[str, ...]] = {}
        self.bots: set[str] = set()

    def add(self, user: dict[str, Any]) -> None:
        uid = user.get("id")
        if not isinstance(uid, str):
            return
        profile = user.get("profile") if isinstance(user.get("profile"), dict) else {}
        candidates = [profile.get("display_name"), profile.get("real_name"), user.get("real_name"), user.get("name")]
        names = [c for c in candidates if isinstance(c, str) and c.strip()]
        self.display[uid] = names[0] if names else uid
        self.names[uid] = tuple(unique(names))
        if user.get("is_bot") or user.get("is_app_user"):
            self.bots.add(uid)

    def name_of(self, uid: str, profile: Any = None) -> str:
        if uid in self.display:
            return self.display[uid]
        if isinstance(profile, dict):
            for key in ("display_name", "real_name", "name"):
                if isinstance(profile.get(key), str) and profile[key].strip():
                    return profile[key]
        return uid


def _load_array(tree: ExportTree, name: str, opts: ReaderOptions) -> Iterator[Item | Quarantined]:
    """The items of one JSON array member (quarantine rows for bad ones, with file and index)."""
    with tree.open(name) as fh:
        yield from iter_json_items(fh, tree.display(name), opts, jsonl=False)


def resolve_text(text: str, people: _People, channels: dict[str, str], mentioned: list[str]) -> str:
    """Slack mrkdwn tokens as readable text: mentions -> @display name, links -> label (url); unescape."""

    def token(m: re.Match[str]) -> str:
        body = m.group(1)
        target, _, label = body.partition("|")
        if target.startswith("@"):
            uid = target[1:]
            name = people.display.get(uid) or label or uid
            mentioned.extend([name, *people.names.get(uid, ())])
            return f"@{name}"
        if target.startswith("#"):
            return f"#{label or channels.get(target[1:], target[1:])}"
        if target.startswith("!"):
            special = target[1:].split("^", 1)[0]
            return label if label else f"@{special}"
        if label and label != re.sub(r"^(?:https?://|mailto:)", "", target):
            return f"{label} ({target})"
        return label or target

    out = TOKEN.sub(token, text)
    return out.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")


def _message(
    obj: Any, people: _People, channels: dict[str, str], shown: str
) -> ChatMessage | str:
    """One message, or why it cannot be read (a quarantine reason)."""
    if not isinstance(obj, dict):
        return f"message is {type(obj).__name__}, expected an object"
    ts = obj.get("ts")
    try:
        stamp = float(ts)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return f"'ts' is {ts!r}, expected Slack's '1700000000.000100' timestamp"
    subtype = obj.get("subtype")
    uid = obj.get("user") if isinstance(obj.get("user"), str) else ""
    bot_id = obj.get("bot_id") if isinstance(obj.get("bot_id"), str) else ""
    raw_text = obj.get("text")
    if raw_text is not None and not isinstance(raw_text, str):
        return f"'text' is {type(raw_text).__name__}, expected a string"
    mentioned: list[str] = []
    text = resolve_text(raw_text or "", people, channels, mentioned)
    who = uid or bot_id
    sender = people.name_of(uid, obj.get("user_profile")) if uid else str(obj.get("username") or bot_id or "")
    drop = None
    if obj.get("type", "message") != "message" or subtype in SYSTEM_SUBTYPES:
        drop = SYSTEM
    elif subtype in JOIN_LEAVE_SUBTYPES:
        drop = JOIN_LEAVE
    elif subtype in BOT_SUBTYPES or uid in people.bots or (bot_id and not uid):
        drop = BOT
    elif subtype in DELETED_SUBTYPES or obj.get("is_deleted"):
        drop = DELETED
    elif not text.strip() and (obj.get("files") or obj.get("attachments") or obj.get("upload")):
        drop = MEDIA_ONLY
    thread = obj.get("thread_ts") if isinstance(obj.get("thread_ts"), str) else None
    return ChatMessage(
        id=str(ts), sender=sender, sender_id=who, ts=stamp, text=text, thread=thread, drop=drop, file=shown,
        names=people.names.get(uid, ()), mentioned=tuple(unique(mentioned)),
    )


def read_slack(tree: ExportTree, opts: ReaderOptions) -> Iterator[Chat | Quarantined]:
    """Every conversation of a Slack export as a chat, with quarantine rows for what cannot be read."""
    root = slack_root(tree.names())
    if root is None:
        yield Quarantined.of(tree.shown, "not a Slack export: users.json and channels.json were not found together")
        return
    people = _People()
    for item in _load_array(tree, f"{root}users.json", opts):
        if isinstance(item, Quarantined):
            yield item
        elif isinstance(item.obj, dict):
            people.add(item.obj)
    convs: list[tuple[str, str, str, list[str]]] = []  # (folder, chat id, title, member ids)
    channels: dict[str, str] = {}
    for meta in META_FILES:
        if f"{root}{meta}" not in tree.names():
            continue
        for item in _load_array(tree, f"{root}{meta}", opts):
            if isinstance(item, Quarantined):
                yield item
                continue
            conv = item.obj if isinstance(item.obj, dict) else {}
            cid, name = conv.get("id"), conv.get("name")
            if not isinstance(cid, str):
                continue
            folder = cid if meta == "dms.json" or not isinstance(name, str) else name
            members = [m for m in conv.get("members") or [] if isinstance(m, str)]
            if isinstance(name, str):
                channels[cid] = name
            title = f"#{name}" if meta in ("channels.json", "groups.json") and isinstance(name, str) else (
                "group DM" if meta == "mpims.json" else "DM")
            convs.append((folder, cid, title, members))
    listed = {c[0] for c in convs}
    days: dict[str, list[str]] = {}
    for n in tree.names():
        if n.startswith(root) and DAY_FILE.match(basename(n)) and parent(n[len(root):]):
            days.setdefault(parent(n[len(root):]), []).append(n)
    convs += [(folder, folder, f"#{folder}", []) for folder in sorted(days) if folder not in listed]
    for folder, cid, title, members in convs:
        chat = Chat("slack", cid, title, tree.display(f"{root}{folder}"))
        for day in sorted(days.get(folder, [])):
            for item in _load_array(tree, day, opts):
                if isinstance(item, Quarantined):
                    chat.malformed += 1
                    yield item
                    continue
                msg = _message(item.obj, people, channels, tree.display(day))
                if isinstance(msg, str):
                    chat.malformed += 1
                    yield Quarantined.of(tree.display(day), f"message {item.index}: {msg}", index=item.index,
                                         raw=repr(item.obj)[:800])
                else:
                    chat.messages.append(msg)
        roster = [n for uid in members for n in (people.display.get(uid, ""), *people.names.get(uid, ()))]
        chat.roster = unique(roster)
        yield chat
