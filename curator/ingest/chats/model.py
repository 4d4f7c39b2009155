"""What every chat-export reader produces: chats of messages, each message either usable or dropped with a reason.

A format module turns its export into `Chat`s (one channel, group, thread file or conversation);
`build.build_samples` turns a chat into training samples. Readers never decide roles or sessions;
they only say who wrote what, when, in reply to what, and why a message can never be a turn.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime

# Why a message never becomes a turn (counted per export in the report's message accounting).
SYSTEM = "system"  # service notices: encryption notice, pins, topic/name changes, calls
JOIN_LEAVE = "join_leave"  # joins, leaves, adds, removals
BOT = "bot"  # written by a bot or an integration
DELETED = "deleted"  # deleted / unsent messages and their tombstones
MEDIA_ONLY = "media_only"  # a photo, file, sticker, voice note... with no text
REACTION = "reaction"  # a reaction, or a message of emoji only
EMPTY = "empty"  # no text at all
MALFORMED = "malformed"  # could not be parsed (also a quarantine row)
# Why a usable message is in no sample (decided by the builder).
UNANSWERED = "unanswered"  # its turn was answered by no one and is in no sample's context
NO_INSTRUCTION = "no_instruction"  # an answer-role turn with nothing before it to answer


@dataclass
class ChatMessage:
    """One message as the export gives it, with mentions already resolved to display names."""

    id: str
    sender: str  # display name
    sender_id: str  # stable handle or id ("" when the export has none: the display name stands in)
    ts: float  # seconds since the epoch (local time for WhatsApp, which has no zone)
    text: str
    reply_to: str | None = None  # id of the message this one replies to
    thread: str | None = None  # explicit thread key (Slack thread_ts): a thread is its own session
    drop: str | None = None  # why it can never be a turn, or None
    file: str = ""  # where it was read (member display), for the sample's source
    line: int | None = None
    names: tuple[str, ...] = ()  # the sender's other names and handles (PII the scrubber must know)
    mentioned: tuple[str, ...] = ()  # display names and handles of people mentioned

    @property
    def who(self) -> str:
        """The identity turns are merged and roles assigned by."""
        return self.sender_id or self.sender


@dataclass
class Chat:
    """One conversation stream of an export: a channel, a group, a DM, a thread file."""

    platform: str
    chat_id: str
    title: str | None
    file: str
    messages: list[ChatMessage] = field(default_factory=list)
    roster: list[str] = field(default_factory=list)  # names/handles the export lists as members
    malformed: int = 0  # messages of this chat that went to quarantine


@dataclass
class MessageTally:
    """Message accounting of one export: read = in a sample's turns + in context only + dropped by reason."""

    read: int = 0
    in_sample: int = 0
    context_only: int = 0
    dropped: Counter[str] = field(default_factory=Counter)
    chats: int = 0
    sessions: int = 0
    samples: int = 0
    role_rule: str = ""
    role_rule_default: bool = True
    chats_without_assistant: int = 0  # named rule: chats where no named sender wrote

    def add(self, other: MessageTally) -> None:
        """Fold another tally (another chat of the same export) into this one."""
        self.read += other.read
        self.in_sample += other.in_sample
        self.context_only += other.context_only
        self.dropped.update(other.dropped)
        self.chats += other.chats
        self.sessions += other.sessions
        self.samples += other.samples
        self.chats_without_assistant += other.chats_without_assistant
        self.role_rule = other.role_rule or self.role_rule
        self.role_rule_default = other.role_rule_default

    def reconciles(self) -> bool:
        """True when every message read is in a sample, in context only, or dropped with a reason."""
        return self.read == self.in_sample + self.context_only + sum(self.dropped.values())

    def as_dict(self) -> dict[str, object]:
        """Plain data for done.json and the report (counts only: no names, no text)."""
        return {
            "read": self.read,
            "in_sample": self.in_sample,
            "context_only": self.context_only,
            "dropped": dict(sorted(self.dropped.items())),
            "chats": self.chats,
            "sessions": self.sessions,
            "samples": self.samples,
            "role_rule": self.role_rule,
            "role_rule_default": self.role_rule_default,
            "chats_without_assistant": self.chats_without_assistant,
        }


SHORTCODE = re.compile(r":[a-z0-9_+\-]+(?:::skin-tone-\d)?:")  # Slack/Discord emoji as text (:tada:, :+1:)


def text_drop(text: str) -> str | None:
    """EMPTY for blank text, REACTION for emoji-only text (no letter or digit once :shortcodes: go), else None."""
    stripped = text.strip()
    if not stripped:
        return EMPTY
    if SHORTCODE.search(stripped) and not SHORTCODE.sub("", stripped).strip():
        return REACTION
    if any(ch.isalnum() for ch in stripped):
        return None
    if any(unicodedata.category(ch) in ("So", "Sk") for ch in stripped):
        return REACTION
    return None


def iso(ts: float) -> str:
    """A timestamp for meta, in UTC ISO 8601."""
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


def unique(names: list[str] | tuple[str, ...]) -> list[str]:
    """Non-empty names, first occurrence wins, order kept."""
    seen: dict[str, None] = {}
    for n in names:
        n = n.strip() if isinstance(n, str) else ""
        if n and n not in seen:
            seen[n] = None
    return list(seen)
