"""OpenAssistant message trees (one tree per JSONL line: {message_tree_id, tree_state, prompt}) -> records.

`opts.oasst_paths == "best"` follows the best-ranked reply (lowest `rank`, ties and unranked -> first)
at every level to a leaf; "all" yields every root-to-leaf path. Deleted messages and messages with
`review_result: false` are skipped with their subtrees. Trailing prompter turns (a question no one
answered) are trimmed, so every record ends with an assistant turn; `source.path` holds the message ids.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from curator.ingest.base import ReaderOptions
from curator.ingest.convert import RowError, need_dict, need_str
from curator.record import Record, Source, make_record, message

ROLES = {"prompter": "user", "assistant": "assistant"}


def _usable(msg: Any) -> bool:
    return isinstance(msg, dict) and not msg.get("deleted") and msg.get("review_result") is not False


def _replies(msg: dict[str, Any]) -> list[dict[str, Any]]:
    replies = msg.get("replies") or []
    if not isinstance(replies, list):
        raise RowError(f"message {msg.get('message_id')}: 'replies' is not a list", "replies")
    return [r for r in replies if _usable(r)]


def _rank(msg: dict[str, Any]) -> float:
    rank = msg.get("rank")
    return rank if isinstance(rank, (int, float)) else float("inf")


def _best_path(root: dict[str, Any]) -> Iterator[list[dict[str, Any]]]:
    path = [root]
    replies = _replies(root)
    while replies:
        best = min(range(len(replies)), key=lambda i: (_rank(replies[i]), i))
        path.append(replies[best])
        replies = _replies(replies[best])
    yield path


def _all_paths(root: dict[str, Any]) -> Iterator[list[dict[str, Any]]]:
    stack = [[root]]
    while stack:
        path = stack.pop()
        replies = _replies(path[-1])
        if not replies:
            yield path
        stack.extend([*path, r] for r in reversed(replies))


def convert_oasst(tree: Any, src: Source, opts: ReaderOptions) -> list[Record]:
    """One message tree -> the best path (default) or every root-to-leaf path, each a record."""
    tree = need_dict(tree, "tree")
    root = need_dict(tree.get("prompt"), "prompt")
    if not _usable(root):
        raise RowError("the prompt is deleted or failed review; the tree has nothing to keep", "prompt")
    walk = _all_paths if opts.oasst_paths == "all" else _best_path
    records = []
    seen = set()
    for path in walk(root):
        while path and path[-1].get("role") == "prompter":
            path = path[:-1]
        ids = "/".join(str(m.get("message_id")) for m in path)
        if not path or ids in seen:
            continue
        seen.add(ids)
        msgs = []
        for depth, m in enumerate(path):
            role = m.get("role")
            if role not in ROLES:
                raise RowError(f"message {m.get('message_id')}: 'role' is {role!r}, expected prompter or assistant",
                               f"depth {depth}.role")
            msgs.append(message(ROLES[role], need_str(m.get("text"), f"depth {depth}.text") or ""))
        meta = {"message_tree_id": tree.get("message_tree_id"), "tree_state": tree.get("tree_state"),
                "lang": root.get("lang")}
        records.append(make_record(msgs, source={**src, "path": ids}, category=opts.category, meta=meta))
    if not records:
        raise RowError("the tree has no reviewed assistant reply", "prompt.replies")
    return records
