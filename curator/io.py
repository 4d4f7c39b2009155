"""Atomic, deterministic file writes: a killed run leaves either the old file or the new one, never half."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq


def _umask() -> int:
    """This process's umask (reading it means setting it, so it is set straight back)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


DEFAULT_MODE = 0o666 & ~_umask()  # what `open()` gives a new file (mkstemp always gives 0600)
DEFAULT_DIR_MODE = 0o777 & ~_umask()  # what `mkdir` gives a new dir (mkdtemp always gives 0700)


@contextmanager
def atomic_path(path: Path, mode: int | None = None) -> Iterator[Path]:
    """Yield a temp path beside `path`; on success fsync and rename it into place.

    `mode`: the file's permissions (e.g. 0o600 for files that may hold raw personal data); by
    default what a plain `open()` would give.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, DEFAULT_MODE if mode is None else mode)
        with open(tmp_path, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)


@contextmanager
def atomic_dir(path: Path) -> Iterator[Path]:
    """Yield a temp dir beside `path`; on success it replaces `path` (an earlier dir there is removed).

    For outputs that are a directory of files read together (a saved dataset): a killed run leaves
    the old directory or the new one. The dir gets the permissions a plain `mkdir` would give.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    old = path.with_name(f".{path.name}.old")
    try:
        yield tmp
        os.chmod(tmp, DEFAULT_DIR_MODE)
        shutil.rmtree(old, ignore_errors=True)
        if path.exists():
            os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_parquet(
    frame: pl.DataFrame | pa.Table, path: Path, mode: int | None = None, row_group_size: int | None = None
) -> None:
    """Write Parquet atomically with fixed settings, so equal data gives equal bytes.

    `row_group_size` bounds the rows per group: a reader filtering on a sorted column then reads
    only the groups whose statistics overlap its range.
    """
    table = frame.to_arrow() if isinstance(frame, pl.DataFrame) else frame
    with atomic_path(path, mode) as tmp:
        pq.write_table(table, tmp, row_group_size=row_group_size, compression="zstd", write_statistics=True,
                       store_schema=True)


def write_json(data: Any, path: Path, mode: int | None = None) -> None:
    """Write JSON atomically, keys sorted, so equal data gives equal bytes."""
    with atomic_path(path, mode) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False, default=str) + "\n")


def write_text(text: str, path: Path, mode: int | None = None) -> None:
    """Write a text file atomically."""
    with atomic_path(path, mode) as tmp:
        tmp.write_text(text, encoding="utf-8")


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
