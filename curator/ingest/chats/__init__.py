"""Messenger and team-chat exports: Slack, Discord, Telegram, WhatsApp, Messenger/Instagram -> samples.

One module per format turns its export into `Chat`s (`model.py`); `build.py` turns each chat into
sessions, turns, roles and one sample per answer turn. `read_chat` is the reader the ingest layer
calls: it yields canonical records, quarantine rows (file and position), and finally one
`MessageTally` for the whole export, which the engine puts into the report's message accounting.

An export is one input whatever its container: a file (WhatsApp `.txt`, Discord/Telegram/Messenger
JSON), a zip, or an unzipped directory (`is_chat_export_dir`). Records: one per answer turn, so a
chat of N messages gives between 0 and N-1 records; `source.index` counts them per input.
Memory: one chat (a channel, a Telegram chat, a conversation folder) is held at a time.
"""

from __future__ import annotations

import io
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import ijson

from curator.ingest.base import Quarantined, ReaderOptions, UnreadableInput
from curator.ingest.chats.build import build_samples
from curator.ingest.chats.discord import looks_like_discord, read_discord
from curator.ingest.chats.messenger import looks_like_messenger, read_messenger
from curator.ingest.chats.model import Chat, MessageTally
from curator.ingest.chats.slack import read_slack, slack_root
from curator.ingest.chats.telegram import looks_like_telegram, read_telegram
from curator.ingest.chats.tree import ExportTree, basename, is_zip
from curator.ingest.chats.whatsapp import looks_like_whatsapp, read_whatsapp
from curator.record import Record

__all__ = ["CHAT_FORMATS", "MessageTally", "detect_chat", "is_chat_export_dir", "read_chat"]

CHAT_FORMATS: tuple[str, ...] = ("slack", "discord", "telegram", "whatsapp", "messenger")
SNIFF_BYTES = 1024 * 1024
# Meta's "Download your information" layout (Facebook, Instagram), optionally wrapped in one folder
MESSENGER_LAYOUT = re.compile(
    r"^(?P<wrap>[^/]+/)??(?:your_[a-z_]+_activity/)?messages/[^/]+/[^/]+/message_\d+\.json$"
)
_JSON = ijson.get_backend("yajl2_c")


def sniff_keys(head: bytes) -> tuple[set[str], set[str]]:
    """Top-level keys of the JSON object starting `head`, and the keys of its first `messages` element."""
    top: set[str] = set()
    first: set[str] = set()
    try:
        for prefix, event, value in _JSON.parse(io.BytesIO(head.removeprefix(b"\xef\xbb\xbf"))):
            if prefix == "" and event == "map_key":
                top.add(value)
            elif prefix == "messages.item" and event == "map_key":
                first.add(value)
            elif prefix == "messages.item" and event == "end_map":
                break  # every format names its other top-level keys before `messages`
    except ijson.JSONError:
        pass  # the head ends mid-document: what was seen is enough
    return top, first


def _json_format(head: bytes) -> str | None:
    if not head.lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"{"):
        return None
    keys, first = sniff_keys(head)
    if looks_like_discord(keys):
        return "discord"
    if looks_like_messenger(keys, first):
        return "messenger"
    if looks_like_telegram(keys, first):
        return "telegram"
    return None


def _tree_format(tree: ExportTree) -> str | None:
    """The chat format of a zip or directory export, from its file layout (and the head of one file).

    The export's own files must sit at its root (a zip may wrap them in one folder), so a directory
    that merely contains exports somewhere below is not taken for one."""
    depth = 1 if tree.zip is not None else 0
    names = [n for n in tree.names() if n.count("/") <= depth + 4]
    root = slack_root(names)
    if root is not None and root.count("/") <= depth:
        return "slack"
    results = [n for n in names if basename(n) == "result.json" and n.count("/") <= depth]
    if results and _json_format(tree.head(sorted(results)[0], SNIFF_BYTES)) == "telegram":
        return "telegram"
    convs = [n for n in names if (m := MESSENGER_LAYOUT.match(n)) and (depth or m["wrap"] is None)]
    if convs and _json_format(tree.head(sorted(convs)[0], SNIFF_BYTES)) == "messenger":
        return "messenger"
    if tree.zip is not None and any(
        n.lower().endswith(".txt") and n.count("/") <= depth and looks_like_whatsapp(tree.head(n, 4096)) for n in names
    ):
        return "whatsapp"
    return None


def detect_chat(path: Path) -> str | None:
    """The chat-export format of `path` (file, zip or directory) from its structure, or None."""
    path = Path(path)
    if path.is_dir() or is_zip(path):
        tree = ExportTree(path, str(path), ReaderOptions())
        try:
            return _tree_format(tree)
        finally:
            tree.close()
    with open(path, "rb") as fh:
        head = fh.read(SNIFF_BYTES)
    if looks_like_whatsapp(head[:4096]):
        return "whatsapp"
    return _json_format(head)


def is_chat_export_dir(path: Path) -> bool:
    """True for a directory that is one chat export (an unzipped Slack, Telegram or Messenger export)."""
    return Path(path).is_dir() and detect_chat(Path(path)) is not None


_READERS: dict[str, Callable[[ExportTree, ReaderOptions], Iterator[Chat | Quarantined]]] = {
    "slack": read_slack,
    "discord": lambda tree, opts: read_discord(tree),
    "telegram": lambda tree, opts: read_telegram(tree),
    "whatsapp": lambda tree, opts: read_whatsapp(tree),
    "messenger": lambda tree, opts: read_messenger(tree),
}


def read_chat(path: Path, display: str, fmt: str, opts: ReaderOptions) -> Iterator[Record | Quarantined | MessageTally]:
    """Records of a chat export, its quarantine rows, and last its message accounting (`MessageTally`)."""
    found = detect_chat(path)
    if found != fmt:
        what = f"it looks like a {found} export" if found else "its structure matches no chat export"
        raise UnreadableInput(f"{display}: format {fmt!r} was asked, but {what}; leave `format` out to auto-detect")
    tree = ExportTree(Path(path), display, opts)
    rule = "named" if opts.chat.assistant else opts.chat.roles
    total = MessageTally(role_rule=rule, role_rule_default=not opts.chat.role_rule_chosen)
    try:
        for refused in tree.refused:
            yield Quarantined.of(display, f"zip member {refused}; it was not read")
        index = 0
        for item in _READERS[fmt](tree, opts):
            if isinstance(item, Quarantined):
                yield item
                continue
            records, tally = build_samples(item, opts.chat, fmt=fmt, category=opts.category, first_index=index)
            index += len(records)
            total.add(tally)
            yield from records
    finally:
        tree.close()
    if not total.reconciles():
        raise AssertionError(f"{display}: message accounting does not reconcile: {total.as_dict()}")
    yield total
