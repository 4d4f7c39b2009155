"""Atomic, deterministic file writes: a killed run leaves either the old file or the new one, never half.

Privacy is inherited: a file or directory created inside an owner-only directory (no group or
other permission bits, e.g. a run's `_work/`, made by `private_dir`) is itself owner-only (0600
files, 0700 dirs), whatever the umask, so every writer of raw text is covered by one rule.
"""

from __future__ import annotations

import fcntl
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
PRIVATE_FILE = 0o600
PRIVATE_DIR = 0o700


def is_private(path: Path) -> bool:
    """True when the nearest existing directory at or above `path` grants nothing to group or others."""
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate.stat().st_mode & 0o077 == 0
    return False


def make_dirs(path: Path) -> Path:
    """`mkdir -p` that keeps privacy: dirs created below an owner-only dir are 0700 (umask ignored)."""
    missing = []
    for candidate in (path, *path.parents):
        if candidate.exists():
            break
        missing.append(candidate)
    private = is_private(path)
    for d in reversed(missing):
        d.mkdir(exist_ok=True)
        if private:
            os.chmod(d, PRIVATE_DIR)
    return path


def private_dir(path: Path) -> Path:
    """Create `path` (and parents) and make it owner-only (0700) before anything is written in it."""
    path.mkdir(parents=True, exist_ok=True, mode=PRIVATE_DIR)
    os.chmod(path, PRIVATE_DIR)
    return path


class DirBusy(Exception):
    """Another process is writing the same output directory; the message says what to do."""


@contextmanager
def dir_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on directory `path` while the block runs, or raise DirBusy at once.

    Two runs writing one output dir would delete each other's work files mid-run; the lock is on
    the directory itself (flock, released when the process dies), so nothing is left behind.
    """
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise DirBusy(
                f"{path} is being written by another run; wait for it to finish or choose another --out"
            ) from None
        yield
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: Path, mode: int | None = None) -> Iterator[Path]:
    """Yield a temp path beside `path`; on success fsync and rename it into place.

    `mode`: the file's permissions (e.g. 0o600 for files that may hold raw personal data); by
    default 0600 inside an owner-only directory and otherwise what a plain `open()` would give.
    """
    make_dirs(path.parent)
    if mode is None:
        mode = PRIVATE_FILE if is_private(path.parent) else DEFAULT_MODE
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, mode)
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
