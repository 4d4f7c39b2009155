"""Which files a run reads: directory arguments expanded to their data files, and a check before any work.

Both run before the engine starts, so a wrong path or an unreadable format stops the run in a
second with every problem named, instead of failing halfway through a long curation.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from curator.ingest import detect_format
from curator.ingest.base import UnreadableInput

DATA_SUFFIXES = (".json", ".jsonl", ".ndjson", ".csv", ".tsv", ".parquet", ".zip")


def expand_inputs(paths: Sequence[str | Path]) -> list[str]:
    """Files as given; a directory (other than a saved HF dataset or a chat export) becomes its data files.

    An unzipped Slack/Telegram/Messenger export is one input, also when it sits below the directory
    given: its files are not inputs of their own.
    """
    from curator.ingest.chats import is_chat_export_dir

    out: list[str] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir() and not (path / "state.json").exists() and not (path / "dataset_dict.json").exists() \
                and not is_chat_export_dir(path):
            exports = [d for d in sorted(path.rglob("*")) if d.is_dir() and is_chat_export_dir(d)]
            exports = [d for d in exports if not any(d != e and d.is_relative_to(e) for e in exports)]
            found = sorted([*(str(d) for d in exports), *(
                str(p) for p in path.rglob("*") if p.is_file() and p.suffix.lower() in DATA_SUFFIXES
                and not any(p.is_relative_to(e) for e in exports))])
            if not found:
                raise UnreadableInput(f"{raw}: a directory with no data files ({', '.join(DATA_SUFFIXES)})")
            out.extend(found)
        else:
            out.append(str(raw))
    return out


def preflight(inputs: Sequence[Any]) -> None:
    """Check every input (an InputSpec) exists and has a known format before any work; name all that fail."""
    problems = []
    for spec in inputs:
        if not Path(spec.path).exists():
            problems.append(f"{spec.path}: no such file or directory")
        elif spec.format is None:
            try:
                detect_format(Path(spec.path))
            except UnreadableInput as exc:
                problems.append(str(exc))
    if problems:
        summary = f"{len(problems)} input(s) cannot be read; nothing was processed:"
        raise UnreadableInput("\n".join([summary, *problems]))
