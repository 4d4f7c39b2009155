"""Which files a run reads: directory arguments expanded to their data files, and a check before any work.

Both run before the engine starts, so a wrong path or an unreadable format stops the run in a
second with every problem named, instead of failing halfway through a long curation.

In a directory, what is recognisably not conversations is skipped and listed (the report shows
the list): files that are not data (README, LICENSE, images), the side files of ChatGPT and
Claude exports that hold no conversations (`users.json`, `projects.json`, ...), hidden entries and
broken symbolic links. A file named explicitly is never skipped: if it cannot be read, the run
stops before any work, as does any other unreadable file of a directory.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from curator.config import CurateConfig
from curator.ingest import detect_format, read_input
from curator.ingest.base import ChatOptions, ReaderOptions, UnreadableInput
from curator.ingest.chats import is_chat_export_dir
from curator.ingest.recognise import recognise_names, unsupported

DATA_SUFFIXES = (".json", ".jsonl", ".ndjson", ".csv", ".tsv", ".parquet", ".zip")
PROBE_ITEMS = 64  # items the pre-check reads of each input: past detection and the first-row checks
# Files beside conversations.json in a ChatGPT or Claude.ai export that hold no conversations.
SIDE_FILES = {
    "user.json": "the ChatGPT export's account file",
    "message_feedback.json": "the ChatGPT export's answer ratings",
    "model_comparisons.json": "the ChatGPT export's regenerated-answer comparisons",
    "shared_conversations.json": "the ChatGPT export's list of shared links",
    "users.json": "the Claude export's account file",
    "projects.json": "the Claude export's projects",
    "memories.json": "the Claude export's memories",
}


@dataclass(frozen=True)
class Skipped:
    """A file of an input directory that the run does not read, and why."""

    path: str
    reason: str


@dataclass
class InputScan:
    """The files a run reads, in order, and what its directory arguments held that it skips."""

    files: list[str] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)


def _is_dataset_dir(path: Path) -> bool:
    return (path / "state.json").exists() or (path / "dataset_dict.json").exists()


def _walk(root: Path, scan: InputScan, exclude: Sequence[Path] = ()) -> list[str]:
    """The data files under `root` (symlinked dirs followed once each); the rest goes to `scan.skipped`.

    Directories in `exclude` (chat exports read as one input each) are not searched.
    """
    found: list[str] = []
    seen: set[str] = set()
    excluded = {os.path.realpath(e) for e in exclude}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen or real in excluded:  # a symlink loop, a directory reached twice, a chat export
            dirnames[:] = []
            continue
        seen.add(real)
        for name in sorted(d for d in dirnames if d.startswith(".")):
            scan.skipped.append(Skipped(os.path.join(dirpath, name), "a hidden directory (not searched)"))
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in filenames:
            path = Path(dirpath) / name
            reason = _skip_reason(path)
            if reason is None:
                found.append(str(path))
            else:
                scan.skipped.append(Skipped(str(path), reason))
    return sorted(found)


def _skip_reason(path: Path) -> str | None:
    """Why a file found in a directory is not read (None: it is read)."""
    if not path.exists():
        return f"a broken symbolic link (to {os.readlink(path)})" if path.is_symlink() else "vanished while listed"
    if path.name.startswith("."):
        return "a hidden file"
    if path.suffix.lower() not in DATA_SUFFIXES:
        return f"not a data file ({path.suffix or 'no suffix'}; data files are {', '.join(DATA_SUFFIXES)})"
    if path.stat().st_size == 0:
        return "an empty file"
    if path.name.lower() in SIDE_FILES:
        try:
            detect_format(path)
        except UnreadableInput:
            return f"{SIDE_FILES[path.name.lower()]}, not conversations"
    return None


def _chat_exports_below(root: Path) -> list[Path]:
    """The outermost unzipped chat exports (Slack, Telegram, Messenger...) inside `root`."""
    exports = [d for d in sorted(root.rglob("*")) if d.is_dir() and is_chat_export_dir(d)]
    return [d for d in exports if not any(d != e and d.is_relative_to(e) for e in exports)]


def scan_inputs(paths: Sequence[str | Path]) -> InputScan:
    """Files as given; a directory (other than a saved HF dataset or a chat export) becomes its data files.

    An unzipped chat export is one input, also when it sits below the directory given.
    """
    scan = InputScan()
    for raw in paths:
        path = Path(raw)
        if path.is_dir() and not _is_dataset_dir(path) and not is_chat_export_dir(path):
            exports = _chat_exports_below(path)  # each one input: its files are not inputs of their own
            export = recognise_names([p.relative_to(path).as_posix() for p in path.rglob("*")
                                      if not any(p.is_relative_to(e) for e in exports)])
            if export is not None:  # an export directory no reader takes: one error, not one per file
                raise unsupported(str(raw), export)
            found = sorted([*map(str, exports), *_walk(path, scan, exclude=exports)])
            if not found:
                raise UnreadableInput(
                    f"{raw}: a directory with no conversation files ({', '.join(DATA_SUFFIXES)}); "
                    f"{len([s for s in scan.skipped if s.path.startswith(str(path))])} file(s) skipped"
                )
            scan.files.extend(found)
        else:
            scan.files.append(str(raw))
    scan.skipped.sort(key=lambda s: s.path)
    return scan


def expand_inputs(paths: Sequence[str | Path]) -> list[str]:
    """The files `scan_inputs` reads (without the list of what it skipped)."""
    return scan_inputs(paths).files


def chat_options(cfg: CurateConfig, i: int) -> ChatOptions:
    """Session/role settings of input `i`: the `chats:` section, overridden by the input's `as:`/`roles:`."""
    spec, chats = cfg.inputs[i], cfg.chats
    assistant = spec.assistant if spec.assistant is not None else chats.assistant
    chosen = bool(assistant) or spec.roles is not None or chats.roles is not None
    return ChatOptions(
        roles=spec.roles or ("named" if assistant else chats.roles or "every_reply"),
        assistant=tuple(assistant),
        top_responders=chats.top_responders,
        session_gap_seconds=chats.session_gap_minutes * 60.0,
        context_turns=chats.context_turns,
        context=chats.context,
        role_rule_chosen=chosen,
    )


def reader_options(cfg: CurateConfig, i: int) -> ReaderOptions:
    """The reader options of input `i` under the run's `ingest:` and `chats:` settings."""
    spec, ingest = cfg.inputs[i], cfg.ingest
    return ReaderOptions(
        max_record_bytes=ingest.max_record_bytes,
        max_archive_bytes=ingest.max_archive_bytes,
        max_compression_ratio=ingest.max_compression_ratio,
        oasst_paths=ingest.oasst_paths,
        column_map=dict(spec.column_map),
        category=spec.category,
        chat=chat_options(cfg, i),
    )


def probe(cfg: CurateConfig, i: int) -> None:
    """Read the first items of input `i` as the run will: raises UnreadableInput if it cannot be read.

    This is what the pre-check promises: the format is known, the container opens (zip member,
    Parquet footer and first rows, HF dataset), and the first record has a shape the format reads.
    """
    spec = cfg.inputs[i]
    items = read_input(Path(spec.path), spec.path, spec.format, reader_options(cfg, i))
    with contextlib.closing(items):
        for n, _ in enumerate(items):
            if n + 1 >= PROBE_ITEMS:
                break


def preflight(cfg: CurateConfig) -> None:
    """Check every input of the config can be read before any work (`probe`); name all that fail."""
    problems = []
    for i in range(len(cfg.inputs)):
        try:
            probe(cfg, i)
        except UnreadableInput as exc:
            problems.append(str(exc))
    if problems:
        summary = f"{len(problems)} input(s) cannot be read; nothing was processed:"
        raise UnreadableInput("\n".join([summary, *problems]))
