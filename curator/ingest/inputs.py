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
    """Files as given; a directory (other than a saved HF dataset) becomes its data files, sorted."""
    out: list[str] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir() and not (path / "state.json").exists() and not (path / "dataset_dict.json").exists():
            found = sorted(str(p) for p in path.rglob("*") if p.is_file() and p.suffix.lower() in DATA_SUFFIXES)
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
