"""Chat exports recognised by their structure, so that no other reader misreads them.

Without this table a Discord or Telegram JSON (top-level `messages`) reads as OpenAI format and
becomes one quarantined "record" per file, and a WhatsApp text file "looks like int". The chat
readers (`curator.ingest.chats`) take a whole export first; what reaches this table is an export
in a form no reader takes (a lone Slack day file, Discord's own data package) or one forced
through another format. Each entry recognises one export by its documented structure, from what
detection already has in hand:
- `row`: a parsed top-level JSON object (or an element of a top-level array),
- `head`: the first bytes of a file that is not JSON,
- `names`: the file names inside a zip or a directory.
`detect_format` and `row_format` consult the table before the generic `messages` rule; a match is
an `UnreadableInput` that says what the input looks like and how to pass it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

from curator.ingest.base import UnreadableInput


@dataclass(frozen=True)
class KnownExport:
    """One export format: its reader's name, how to say it, how to pass it whole, and how to recognise it."""

    format: str
    label: str
    whole: str | None = None  # how its reader takes it; None: no reader
    row: Callable[[dict[str, Any]], bool] | None = None
    head: Callable[[bytes], bool] | None = None
    names: Callable[[Sequence[str]], bool] | None = None


def _first_message(row: dict[str, Any]) -> dict[str, Any]:
    msgs = row.get("messages")
    first = msgs[0] if isinstance(msgs, list) and msgs else None
    return first if isinstance(first, dict) else {}


def _discord(row: dict[str, Any]) -> bool:
    # DiscordChatExporter JSON: {guild, channel, dateRange, messages: [{id, timestamp, content, author}]}
    first = _first_message(row)
    return ("messages" in row and isinstance(row.get("guild"), dict) and isinstance(row.get("channel"), dict)) \
        or (isinstance(first.get("author"), dict) and "timestamp" in first and "content" in first
            and "role" not in first)


def _discord_package(row: dict[str, Any]) -> bool:
    # Discord's own data package: messages/c<id>/messages.json, a list of {ID, Timestamp, Contents}
    return {"ID", "Timestamp", "Contents"} <= row.keys()


TELEGRAM_CHAT_TYPES = frozenset(("personal_chat", "bot_chat", "private_group", "private_supergroup",
                                 "public_supergroup", "private_channel", "public_channel", "saved_messages"))


def _telegram(row: dict[str, Any]) -> bool:
    # Telegram Desktop JSON: one chat {name, type, id, messages: [{id, type, date, from, from_id, text,
    # text_entities}]}, or a whole account {about, chats: {list: [...]}, ...}.
    first = _first_message(row)
    chats = row.get("chats")
    return ("messages" in row and (row.get("type") in TELEGRAM_CHAT_TYPES
                                   or bool(first.keys() & {"from_id", "date_unixtime", "text_entities"}))) \
        or (isinstance(chats, dict) and isinstance(chats.get("list"), list))


def _messenger(row: dict[str, Any]) -> bool:
    # Meta "Download your information" (Messenger, Instagram): {participants, messages: [{sender_name,
    # timestamp_ms, content}], title, thread_path}; the 2024 end-to-end-encrypted export uses senderName.
    first = _first_message(row)
    return "participants" in row and "messages" in row and (
        bool(row.keys() & {"thread_path", "thread_type", "is_still_participant", "threadName"})
        or bool(first.keys() & {"sender_name", "senderName", "timestamp_ms"}))


def _slack(row: dict[str, Any]) -> bool:
    # Slack workspace export: one JSON array per channel and day of {type: message, user, text, ts}
    return row.get("type") == "message" and "ts" in row and ("text" in row or "subtype" in row)


def _slack_names(names: Sequence[str]) -> bool:
    base = {PurePosixPath(n).name for n in names}
    return {"channels.json", "users.json"} <= base or {"integration_logs.json", "users.json"} <= base


# "12/31/20, 10:15 PM - Alice: Hi" (Android), "[31.12.20, 22:15:03] Alice: Hi" (iOS), "31/12/2020, 22:15 - ..."
_WHATSAPP_LINE = re.compile(
    rb"^(?:\xe2\x80\x8e)?\[?\d{1,4}[./-]\d{1,2}[./-]\d{2,4},? \d{1,2}[:.]\d{2}(?:[:.]\d{2})?"
    rb"(?:\s?(?:[AaPp]\.?\s?[Mm]\.?))?\]?(?: -|:)? \S"
)


def _whatsapp_head(head: bytes) -> bool:
    lines = [ln for ln in head.removeprefix(b"\xef\xbb\xbf").splitlines()[:10] if ln.strip()]
    return bool(lines) and sum(1 for ln in lines if _WHATSAPP_LINE.match(ln)) * 2 >= len(lines)


def _whatsapp_names(names: Sequence[str]) -> bool:
    base = [PurePosixPath(n).name for n in names]
    return "_chat.txt" in base or any(b.startswith("WhatsApp Chat") and b.endswith(".txt") for b in base)


def _meta_names(names: Sequence[str]) -> bool:
    return any(re.search(r"(^|/)messages/(inbox|archived_threads|e2ee_cutover)/[^/]+/message_\d+\.json$", n)
               for n in names)


KNOWN_EXPORTS: tuple[KnownExport, ...] = (
    KnownExport("discord", "a Discord export", "the DiscordChatExporter JSON file", row=_discord),
    KnownExport("discord_package", "a Discord data package", row=_discord_package),
    KnownExport("telegram", "a Telegram export", "Telegram Desktop's result.json", row=_telegram),
    KnownExport("messenger", "a Messenger/Instagram export", "the export .zip, its folder or a message_N.json",
                row=_messenger, names=_meta_names),
    KnownExport("slack", "a Slack export", "the workspace export .zip or its unzipped directory",
                row=_slack, names=_slack_names),
    KnownExport("whatsapp", "a WhatsApp chat export", "the exported .txt or its .zip",
                head=_whatsapp_head, names=_whatsapp_names),
)


def recognise_row(row: Any) -> KnownExport | None:
    """The known export whose structure `row` has, or None."""
    if not isinstance(row, dict):
        return None
    return next((e for e in KNOWN_EXPORTS if e.row is not None and e.row(row)), None)


def recognise_head(head: bytes) -> KnownExport | None:
    """The known (non-JSON) export whose first bytes are `head`, or None."""
    return next((e for e in KNOWN_EXPORTS if e.head is not None and e.head(head)), None)


def recognise_names(names: Sequence[str]) -> KnownExport | None:
    """The known export whose zip members or directory files are `names` (relative, '/'-separated), or None."""
    return next((e for e in KNOWN_EXPORTS if e.names is not None and e.names(names)), None)


def by_format(name: str) -> KnownExport | None:
    """The table entry for a format name (what `row_format` returned), or None."""
    return next((e for e in KNOWN_EXPORTS if e.format == name), None)


def unsupported_reason(export: KnownExport, asked: str | None = None) -> str:
    """Why an input recognised as `export` is not read as given, and what to do."""
    if export.whole is None:
        return (
            f"unsupported format: looks like {export.label}, which has no reader yet; "
            "convert it to OpenAI `messages` JSONL, or leave it out of the inputs"
        )
    if asked is not None:
        return f"looks like {export.label}, not {asked!r} data; leave `format:` out or set format: {export.format}"
    return f"looks like part of {export.label}, which is read whole: pass {export.whole}"


def unsupported(where: str, export: KnownExport, asked: str | None = None) -> UnreadableInput:
    """The error for an input recognised as an export that no reader takes in this form."""
    return UnreadableInput(f"{where}: {unsupported_reason(export, asked)}")
