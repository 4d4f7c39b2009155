"""From a chat's messages to training samples: sessions, turns, roles, and one sample per answer turn.

1. **Drop** what can never be a turn (the reader's reason: system, join/leave, bot, deleted,
   media-only; here: empty, emoji-only = reaction). Each is counted by reason.
2. **Sessions.** A thread (Slack `thread_ts`) is its own session. The rest of the stream, in time
   order, is cut wherever a silence exceeds `session_gap`; then every reply link (Discord
   `reference`, Telegram `reply_to_message_id`) joins the session of the message it answers to the
   replier's, so a conversation resumed by a reply stays one session across the gap.
3. **Turns.** Consecutive messages of one sender within a session (and within the gap) merge into
   one turn; a turn answers the message its first reply link points at, when it has one.
4. **Roles** (`ChatOptions.roles`): `named` — the senders the user named (`as:`) are the assistant;
   `top_responders` — per chat, the N senders whose turns most often follow another sender's;
   `every_reply` (default) — every turn that follows another sender's is an answer, and its sender
   is the assistant *of that sample* (so both sides of a support chat yield samples).
5. **Samples.** Each answer turn yields one record: up to `context_turns` turns before the turn it
   answers (its context), the answered turn (instruction), the assistant turns between them when
   the answer continues the conversation (none when it is an explicit reply to an older message),
   and the answer. Speakers keep their names (`name`) in chats of more than two people. With
   `context: field` the record is the pair (instruction, answer) and the other turns go to its
   `context` as "Name: text" lines, so no earlier answer is trained again in a later sample.
6. **Accounting.** Every message read ends in exactly one bucket: in a sample's instruction or
   answer, in some sample's context only, or dropped by reason (`unanswered`: its turn got no
   answer and is in no context; `no_instruction`: an answer-role turn with nothing to answer).

Hand-written because no library sessionizes chat logs: LangChain's chat loaders merge runs and map
one sender to AI, but neither follow threads nor account for what they drop.
"""

from __future__ import annotations

import hashlib
import itertools
from collections import Counter
from dataclasses import dataclass, field

from curator.ingest.base import ChatOptions
from curator.ingest.chats.model import NO_INSTRUCTION, UNANSWERED, Chat, ChatMessage, MessageTally, iso, text_drop
from curator.record import Message, Record, Source, make_record, message

MAX_ROSTER = 100  # a chat roster up to this size goes whole into every sample's participants


@dataclass
class Turn:
    """Consecutive messages of one sender in one session."""

    who: str
    speaker: str
    messages: list[ChatMessage] = field(default_factory=list)
    reply_to: str | None = None

    @property
    def text(self) -> str:
        return "\n".join(m.text for m in self.messages)


class _Sessions:
    """Union-find over session keys (threads, time segments) joined by reply links."""

    def __init__(self) -> None:
        self.parent: dict[str, str] = {}
        self.order: dict[str, int] = {}

    def add(self, key: str) -> None:
        if key not in self.order:
            self.order[key] = len(self.order)
            self.parent[key] = key

    def find(self, key: str) -> str:
        while self.parent[key] != key:
            self.parent[key] = self.parent[self.parent[key]]
            key = self.parent[key]
        return key

    def union(self, a: str, b: str) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            # the earlier-created key stays the root, so a session's key does not depend on link order
            first, second = sorted((ra, rb), key=lambda k: self.order[k])
            self.parent[second] = first


def split_sessions(msgs: list[ChatMessage], gap_seconds: float) -> list[list[ChatMessage]]:
    """Sessions of time-ordered messages: threads, then time gaps, joined by reply links (order kept)."""
    sets = _Sessions()
    key_of: dict[str, str] = {}
    segment = -1
    last_ts: float | None = None
    for m in msgs:
        if m.thread:
            key = f"t:{m.thread}"
        else:
            if last_ts is None or m.ts - last_ts > gap_seconds:
                segment += 1
            last_ts = m.ts
            key = f"s:{segment}"
        sets.add(key)
        key_of[m.id] = key
    for m in msgs:
        if m.reply_to and m.reply_to in key_of:
            sets.union(key_of[m.id], key_of[m.reply_to])
    groups: dict[str, list[ChatMessage]] = {}
    for m in msgs:
        groups.setdefault(sets.find(key_of[m.id]), []).append(m)
    return list(groups.values())


def merge_turns(session: list[ChatMessage], gap_seconds: float) -> list[Turn]:
    """Consecutive messages of one sender (no longer apart than the gap) as one turn each."""
    turns: list[Turn] = []
    for m in session:
        last = turns[-1] if turns else None
        if last is not None and last.who == m.who and m.ts - last.messages[-1].ts <= gap_seconds:
            last.messages.append(m)
        else:
            last = Turn(m.who, m.sender or m.who)
            last.messages.append(m)
            turns.append(last)
        if last.reply_to is None and m.reply_to and all(m.reply_to != x.id for x in last.messages):
            last.reply_to = m.reply_to
    return turns


def _matches(m: ChatMessage, wanted: set[str]) -> bool:
    return any(n.casefold() in wanted for n in (m.sender, m.sender_id, *m.names) if n)


def pick_assistants(sessions: list[list[Turn]], msgs: list[ChatMessage], opts: ChatOptions) -> set[str] | None:
    """The `who` of the assistant senders of this chat, or None under every_reply (decided per sample)."""
    if opts.roles == "named" or opts.assistant:
        wanted = {a.casefold() for a in opts.assistant}
        return {m.who for m in msgs if _matches(m, wanted)}
    if opts.roles == "top_responders":
        answers: Counter[str] = Counter()
        for turns in sessions:
            for prev, turn in itertools.pairwise(turns):
                if prev.who != turn.who:
                    answers[turn.who] += 1
        ranked = sorted(answers.items(), key=lambda kv: (-kv[1], kv[0]))
        return {who for who, _ in ranked[: opts.top_responders]}
    return None


def build_samples(
    chat: Chat, opts: ChatOptions, *, fmt: str, category: str | None, first_index: int
) -> tuple[list[Record], MessageTally]:
    """The records of one chat (indices from `first_index`) and its message accounting."""
    rule = "named" if opts.assistant else opts.roles
    tally = MessageTally(chats=1, role_rule=rule, role_rule_default=not opts.role_rule_chosen)
    tally.read = len(chat.messages) + chat.malformed
    if chat.malformed:
        tally.dropped["malformed"] += chat.malformed
    live: list[tuple[float, int, ChatMessage]] = []
    for order, m in enumerate(chat.messages):
        reason = m.drop or text_drop(m.text)
        if reason:
            tally.dropped[reason] += 1
        else:
            live.append((m.ts, order, m))
    msgs = [m for _, _, m in sorted(live, key=lambda t: (t[0], t[1]))]
    gap = opts.session_gap_seconds
    sessions = [merge_turns(s, gap) for s in split_sessions(msgs, gap)]
    tally.sessions = len(sessions)
    assistants = pick_assistants(sessions, msgs, opts)
    if rule == "named" and not assistants and msgs:
        tally.chats_without_assistant = 1
    multi_party = len({m.who for m in msgs}) > 2
    roster = chat.roster if len(chat.roster) <= MAX_ROSTER else []
    records: list[Record] = []
    for turns in sessions:
        builder = _SessionSamples(chat, turns, assistants, opts, multi_party, roster)
        for k in range(len(turns)):
            rec = builder.sample(k, fmt=fmt, category=category, index=first_index + len(records), rule=rule)
            if rec is not None:
                records.append(rec)
        for t, status in zip(turns, builder.status, strict=True):
            n = len(t.messages)
            if status == "turn":
                tally.in_sample += n
            elif status == "context":
                tally.context_only += n
            else:
                tally.dropped[status or UNANSWERED] += n
    tally.samples = len(records)
    return records, tally


class _SessionSamples:
    """Samples of one session's turns; `status[i]` ends as 'turn', 'context', NO_INSTRUCTION or None."""

    def __init__(
        self, chat: Chat, turns: list[Turn], assistants: set[str] | None, opts: ChatOptions, multi_party: bool,
        roster: list[str],
    ) -> None:
        self.chat, self.turns, self.assistants = chat, turns, assistants
        self.window, self.as_field = opts.context_turns, opts.context == "field"
        self.multi_party = multi_party
        self.status: list[str | None] = [None] * len(turns)
        self.turn_of = {m.id: i for i, t in enumerate(turns) for m in t.messages}
        first = turns[0].messages[0]
        self.session = hashlib.sha256(f"{chat.platform}\0{chat.chat_id}\0{first.id}".encode()).hexdigest()[:16]
        people = [*roster]
        for t in turns:
            for m in t.messages:
                people += [m.sender, *m.names, *m.mentioned]
        self.participants = sorted({p.strip() for p in people if p and p.strip()})

    def _is_user(self, turn: Turn, answer: Turn) -> bool:
        if self.assistants is None:
            return turn.who != answer.who
        return turn.who not in self.assistants

    def _instruction(self, k: int) -> tuple[int, bool] | None:
        """(index of the turn answered, whether by an explicit reply link), or None."""
        answer = self.turns[k]
        target = self.turn_of.get(answer.reply_to) if answer.reply_to else None
        if target is not None and target < k and self._is_user(self.turns[target], answer):
            return target, True
        for j in range(k - 1, -1, -1):
            if self._is_user(self.turns[j], answer):
                return j, False
        return None

    def sample(self, k: int, *, fmt: str, category: str | None, index: int, rule: str) -> Record | None:
        """The record whose answer is turn `k`, or None when turn `k` is not an answer."""
        answer = self.turns[k]
        if self.assistants is not None and answer.who not in self.assistants:
            return None
        found = self._instruction(k)
        if found is None:
            if self.assistants is not None or k > 0:
                self._mark(k, NO_INSTRUCTION)
            return None
        j, explicit = found
        context = list(range(max(0, j - self.window), j))
        between = [] if explicit else list(range(j + 1, k))
        for i in (*context, *between):
            self._mark(i, "context")
        self._mark(j, "turn")
        self._mark(k, "turn")
        picked = [*context, j, *between, k]
        msgs: list[Message] = []
        transcript: list[str] = []
        for i in picked:
            t = self.turns[i]
            if self.as_field and i not in (j, k):
                transcript.append(f"{t.speaker}: {t.text}")
                continue
            role = "user" if self._is_user(t, answer) else "assistant"
            msgs.append(message(role, t.text, name=t.speaker if self.multi_party else None))
        last = answer.messages[0]
        ids = [m.id for i in picked for m in self.turns[i].messages]
        source: Source = {"file": last.file or self.chat.file, "index": index, "line": last.line, "format": fmt,
                          "path": "/".join(ids)}
        meta = {
            "platform": self.chat.platform,
            "chat": self.chat.title,
            "session": self.session,
            "participants": self.participants,
            "role_rule": rule,
            "answer_ts": iso(answer.messages[-1].ts),
            "context_turns": len(context) + len(between),
        }
        return make_record(msgs, source=source, context="\n".join(transcript) or None, category=category, meta=meta)

    def _mark(self, i: int, status: str) -> None:
        rank = {"turn": 3, "context": 2, NO_INSTRUCTION: 1, None: 0}
        if rank[status] > rank[self.status[i]]:
            self.status[i] = status
