"""What every reader yields: canonical records, or quarantine rows that say where and why.

A reader is a generator `read(path, opts) -> Iterator[Record | Quarantined]`. It never raises for a
bad record; it raises `UnreadableInput` only when the file as a whole cannot be read (missing,
not the format asked for, an archive that is unsafe to open), naming the file and what to do.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from curator.record import Record

MAX_EXCERPT = 200


class UnreadableInput(Exception):
    """The whole input cannot be read; the message names the file and what to do."""


@dataclass(frozen=True)
class Quarantined:
    """A record that could not become a canonical record, with where it was and why."""

    file: str
    index: int | None
    line: int | None
    reason: str
    field: str | None = None
    excerpt: str = ""

    @staticmethod
    def of(
        file: str,
        reason: str,
        *,
        index: int | None = None,
        line: int | None = None,
        field: str | None = None,
        raw: str | bytes = "",
    ) -> Quarantined:
        """Build a quarantine row, keeping only a short excerpt of the raw input."""
        if isinstance(raw, bytes):
            raw = raw[: MAX_EXCERPT * 4].decode("utf-8", "replace")
        return Quarantined(file, index, line, reason, field, raw[:MAX_EXCERPT])


@dataclass(frozen=True)
class ChatOptions:
    """How chat exports become samples (from `chats:` and the input's `as:`/`roles:`; see config.ChatConfig)."""

    roles: str = "every_reply"  # every_reply | named | top_responders
    assistant: tuple[str, ...] = ()
    top_responders: int = 1
    session_gap_seconds: float = 3600.0
    context_turns: int = 4
    context: str = "turns"  # turns | field (see config.ChatConfig.context)
    role_rule_chosen: bool = False  # False: the default rule applied because the user chose none


@dataclass(frozen=True)
class ReaderOptions:
    """Options shared by all readers; each reader reads only those it needs."""

    max_record_bytes: int = 16 * 1024 * 1024
    max_archive_bytes: int = 4 * 1024**3
    max_compression_ratio: float = 200.0
    oasst_paths: str = "best"  # "best": the best-ranked reply at each turn; "all": every root-to-leaf path
    column_map: dict[str, str] = field(default_factory=dict)  # generic readers: canonical name -> column
    category: str | None = None  # category for every record of this input, when the format has none
    chat: ChatOptions = field(default_factory=ChatOptions)  # chat exports: sessions, roles, context


Reader = Callable[[Path, str, ReaderOptions], Iterator["Record | Quarantined"]]
