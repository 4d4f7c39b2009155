"""WhatsApp "Export chat" text (`.txt`, or the `.zip` holding it with the media) -> one chat per file.

Line formats differ by platform and locale; one header pattern covers them (a line that does not
start with a header continues the previous message, so multi-line messages stay whole):
- Android `dd/mm/yyyy, hh:mm - Name: text`, `m/d/yy, h:mm AM - Name: text` (U+202F or `_`
  before AM/PM), `dd.mm.yy, hh:mm - ...`, `13.6.2018 klo 21.25.15 - ...`;
- iOS `[dd/mm/yy, hh:mm:ss] Name: text`, `[m/d/yy, h:mm:ss PM] ~ Name: text` (a `~` marks a
  non-contact), often behind a U+200E mark; `[2023/5/4, 16:13:23]` year first.
The day/month order is decided per file: a first number above 12 means day first, a second above
12 means month first, and when every date is ambiguous the order under which timestamps run forward
wins (a 12-hour clock breaks a tie towards month first, as in the US locale). Times are the phone's
local time (the export has no zone) and only their differences matter here.

Android system lines have no sender (`- Alice added Bob`); iOS writes them under the chat's name
with the text behind a U+200E mark. Media placeholders (`<Media omitted>`, `<attached: ...>`,
`image omitted`, `... (file attached)`) are removed from the text; a message left empty is
media-only. Deleted-message notices and the encryption notice are dropped with their reasons, and
the `<This message was edited>` suffix is stripped.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime

from curator.ingest.base import Quarantined
from curator.ingest.chats.model import DELETED, JOIN_LEAVE, MEDIA_ONLY, SYSTEM, Chat, ChatMessage, unique
from curator.ingest.chats.tree import ExportTree, basename

HEADER = re.compile(
    r"""^[\u200e\u200f\ufeff ]*(?P<br>\[)?
    (?P<d1>\d{1,4})[./-]\ ?(?P<d2>\d{1,2})[./-]\ ?(?P<d3>\d{1,4})\.?,?\ +(?:klo\ +)?
    (?P<h>\d{1,2})[:.](?P<mi>\d{2})(?:[:.](?P<s>\d{2}))?
    (?:[ \u202f\u00a0_]*(?P<ap>[AaPp]\.?\ ?[Mm]\.?))?
    (?(br)\])(?:\ [-\u2013]\ |:\ |\ )(?P<rest>.*)$""",
    re.X,
)
SENDER = re.compile(r"^[~\u202f\u00a0 ]*(?P<name>[^:]{1,80}?):(?: (?P<text>.*)|)$", re.S)
MEDIA_LINE = re.compile(
    r"^(?:<(?:media omitted|attached: [^>]+|medien ausgeschlossen|multimedia omitido|médias omis|media weggelaten"
    r"|mídia oculta|arquivo de mídia oculto|media dihilangkan|media omessi)>"
    r"|(?:image|video|audio|sticker|gif|document|contact card) omitted|.+ \(file attached\))$",
    re.I,
)
DELETED_TEXT = re.compile(
    r"^(?:this message was deleted|you deleted this message|diese nachricht wurde gelöscht|du hast diese nachricht "
    r"gelöscht|se eliminó este mensaje|eliminaste este mensaje|ce message a été supprimé|vous avez supprimé ce "
    r"message|questo messaggio è stato eliminato|esta mensagem foi apagada|dit bericht is verwijderd)\.?$",
    re.I,
)
ENCRYPTION = re.compile(r"end-to-end|ende-zu-ende|extremo a extremo|bout en bout|end-to-end-versleuteld", re.I)
JOIN_LEAVE_TEXT = re.compile(
    r"\b(?:added|removed|left|joined|created (?:the )?group|created this group|invite link|changed (?:their|the) "
    r"phone number|hat .+ hinzugefügt|ist beigetreten|hat die gruppe verlassen|añadió|salió|a ajouté|est parti)\b",
    re.I,
)
CALL_TEXT = re.compile(r"^(?:missed (?:voice|video|group) call|(?:voice|video) call)\b", re.I)
EDITED = re.compile(r"\s*\u200e?<this message was edited>$", re.I)
MARKS = "\u200e\u200f"


def looks_like_whatsapp(head: bytes) -> bool:
    """True when the first non-empty line of `head` is a WhatsApp message header."""
    text = head.decode("utf-8", "replace").lstrip("\ufeff")
    for line in text.splitlines()[:5]:
        if line.strip():
            m = HEADER.match(line)
            return m is not None and _date_ok(m)
    return False


def _date_ok(m: re.Match[str]) -> bool:
    d1, d2, d3 = int(m["d1"]), int(m["d2"]), int(m["d3"])
    return 0 < d2 <= 31 and min(d1, d3) > 0 and int(m["h"]) < 24 and int(m["mi"]) < 60


@dataclass
class _Raw:
    line: int
    header: re.Match[str]
    lines: list[str] = field(default_factory=list)
    bad_offset: int | None = None  # byte offset of invalid UTF-8, if any


def _raw_messages(stream: object, display: str) -> Iterator[_Raw]:
    """Messages as their header match and text lines; text before the first header is skipped."""
    current: _Raw | None = None
    offset = 0
    for line_no, raw in enumerate(stream, start=1):  # type: ignore[call-overload]
        bad = None
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            bad = offset + exc.start
            text = raw.decode("utf-8", "replace")
        offset += len(raw)
        if line_no == 1:
            text = text.lstrip("\ufeff")
        text = text.rstrip("\r\n")
        m = HEADER.match(text)
        if m is not None and _date_ok(m):
            if current is not None:
                yield current
            current = _Raw(line_no, m, [m["rest"]])
        elif current is not None:
            current.lines.append(text)
        if bad is not None and current is not None and current.bad_offset is None:
            current.bad_offset = bad
    if current is not None:
        yield current


def _date_order(raws: list[_Raw]) -> str:
    """'dmy' or 'mdy' for the dates of one file that are not year-first."""
    pairs = [(int(r.header["d1"]), int(r.header["d2"])) for r in raws if len(r.header["d1"]) < 4]
    if any(a > 12 for a, _ in pairs):
        return "dmy"
    if any(b > 12 for _, b in pairs):
        return "mdy"
    scores = {}
    for order in ("dmy", "mdy"):
        stamps = [ts for r in raws if (ts := _timestamp(r.header, order)) is not None]
        scores[order] = sum(1 for a, b in itertools.pairwise(stamps) if b < a)
    if scores["dmy"] != scores["mdy"]:
        return min(scores, key=lambda o: scores[o])
    return "mdy" if any(r.header["ap"] for r in raws) else "dmy"


def _timestamp(h: re.Match[str], order: str) -> float | None:
    """Seconds since the epoch of a header (its local time read as UTC), or None for an impossible date."""
    d1, d2, d3 = h["d1"], h["d2"], h["d3"]
    if len(d1) == 4:
        year, month, day = int(d1), int(d2), int(d3)
    elif order == "dmy":
        day, month, year = int(d1), int(d2), int(d3)
    else:
        month, day, year = int(d1), int(d2), int(d3)
    if year < 100:
        year += 2000
    hour = int(h["h"])
    if h["ap"]:
        pm = h["ap"].lower().startswith("p")
        hour = hour % 12 + (12 if pm else 0)
    try:
        return datetime(year, month, day, hour, int(h["mi"]), int(h["s"] or 0), tzinfo=UTC).timestamp()
    except ValueError:
        return None


def _classify(raw: _Raw) -> tuple[str, str, str | None]:
    """(sender, text, drop reason) of one message."""
    rest = "\n".join(raw.lines)
    first = raw.lines[0]
    m = SENDER.match(rest)
    if m is None or any(q in m["name"] for q in '"\u201c\u201d'):  # no sender, or a quoted subject change
        reason = JOIN_LEAVE if JOIN_LEAVE_TEXT.search(first) else SYSTEM
        return "", rest, reason
    sender = m["name"].strip(f" ~\u202f\u00a0{MARKS}")
    text = m["text"] or ""
    marked = text[:1] != "" and text[0] in MARKS
    if marked and not MEDIA_LINE.match(text.strip(MARKS)) and not DELETED_TEXT.match(text.strip(MARKS)):
        # iOS writes service lines under the chat's name, behind a left-to-right mark
        return sender, text, JOIN_LEAVE if JOIN_LEAVE_TEXT.search(text) else SYSTEM
    text = EDITED.sub("", text)
    plain = text.strip(MARKS + " ")
    if DELETED_TEXT.match(plain):
        return sender, "", DELETED
    if ENCRYPTION.search(plain) and len(plain) < 200 and raw.line <= 3:
        return sender, text, SYSTEM
    if CALL_TEXT.match(plain):
        return sender, "", SYSTEM
    lines = [ln for ln in text.split("\n") if not MEDIA_LINE.match(ln.strip(MARKS + " "))]
    kept = "\n".join(lines).strip(MARKS)
    if (not kept.strip() and text.strip()) or plain == "null":
        return sender, "", MEDIA_ONLY
    return sender, kept, None


def chat_title(member: str) -> str:
    """The chat's name from the export's file name ('WhatsApp Chat with Alice.txt' -> 'Alice')."""
    stem = re.sub(r"\.(?:txt|zip)$", "", basename(member), flags=re.I)
    m = re.match(r"^WhatsApp[ -]Chat(?: with| mit| con| avec| met| com|\s*-)\s*(.+)$", stem, re.I)
    return (m.group(1) if m else stem).strip()


def read_whatsapp(tree: ExportTree) -> Iterator[Chat | Quarantined]:
    """Every WhatsApp chat text of the export (one `.txt`, or each chat `.txt` inside a zip)."""
    members = [n for n in tree.names() if n.lower().endswith(".txt") or tree.is_single_file]
    found = False
    for name in members:
        if not looks_like_whatsapp(tree.head(name, 4096)):
            continue
        found = True
        yield from _read_one(tree, name)
    if not found:
        yield Quarantined.of(tree.shown, "no WhatsApp chat text found: the first line is not a message header "
                             "like '12/31/23, 9:41 PM - Name: text' or '[31.12.23, 21:41:00] Name: text'")


def _read_one(tree: ExportTree, name: str) -> Iterator[Chat | Quarantined]:
    shown = tree.display(name)
    with tree.open(name) as fh:
        raws = list(_raw_messages(fh, shown))
    order = _date_order(raws)
    title = chat_title(tree.shown if tree.zip is not None and basename(name) == "_chat.txt" else name)
    chat = Chat("whatsapp", title, title, shown)
    for raw in raws:
        ts = _timestamp(raw.header, order)
        if raw.bad_offset is not None or ts is None:
            h = raw.header
            reason = (f"line {raw.line}: invalid UTF-8 at byte offset {raw.bad_offset}; re-encode the file as UTF-8"
                      if raw.bad_offset is not None
                      else f"line {raw.line}: '{h['d1']}/{h['d2']}/{h['d3']}' is not a valid date ({order} order)")
            chat.malformed += 1
            yield Quarantined.of(shown, reason, index=len(chat.messages) + chat.malformed - 1, line=raw.line,
                                 raw="\n".join(raw.lines).encode("utf-8", "replace"))
            continue
        sender, text, drop = _classify(raw)
        chat.messages.append(ChatMessage(str(raw.line), sender, "", ts, text, drop=drop, file=shown, line=raw.line))
    chat.roster = unique([m.sender for m in chat.messages if m.sender and m.drop not in (SYSTEM, JOIN_LEAVE)])
    yield chat
