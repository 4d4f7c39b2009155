"""An export as a tree of named files, whether it is a zip, an unzipped directory or a single file.

Chat exports are many files (a Slack export holds a JSON file per channel and day), and people hand
them over zipped or unzipped. Readers list and open members by their POSIX path inside the export;
zip members are streamed through the same safety checks as every other archive (`archive.py`:
no absolute or escaping paths, decompression-bomb limits on the bytes actually inflated), and a
directory never yields a file outside itself (symlinks out are skipped).
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from curator.ingest.archive import ZIP_MAGIC, BombGuard, bomb_message, unsafe_reason
from curator.ingest.base import ReaderOptions, UnreadableInput
from curator.ingest.sources import binary_size


class ExportTree:
    """Members of an export by POSIX path; `display(name)` is how quarantine rows and sources name them."""

    def __init__(self, path: Path, display: str, opts: ReaderOptions) -> None:
        self.path, self.shown, self.opts = path, display, opts
        self.zip: zipfile.ZipFile | None = None
        self.refused: list[str] = []
        self._members: dict[str, zipfile.ZipInfo | Path] = {}
        if path.is_dir():
            root = path.resolve()
            for p in sorted(path.rglob("*")):
                if p.is_file() and p.resolve().is_relative_to(root):
                    self._members[p.relative_to(path).as_posix()] = p
        elif is_zip(path):
            self._open_zip()
        else:
            self._members[path.name] = path

    def _open_zip(self) -> None:
        try:
            self.zip = zipfile.ZipFile(self.path)
        except (OSError, zipfile.BadZipFile) as exc:
            raise UnreadableInput(f"{self.shown}: not a readable zip archive ({exc}); re-download the export") from exc
        infos = self.zip.infolist()
        total = sum(i.file_size for i in infos)
        if total > self.opts.max_archive_bytes:
            raise UnreadableInput(
                f"{self.shown}: members add up to {total} bytes, above ingest.max_archive_bytes="
                f"{binary_size(self.opts.max_archive_bytes)}; raise it if you trust this archive"
            )
        for info in infos:
            if info.is_dir():
                continue
            why = unsafe_reason(info.filename)
            if why:
                self.refused.append(f"{info.filename!r} {why}")
            else:
                self._members[info.filename.replace("\\", "/")] = info

    @property
    def is_single_file(self) -> bool:
        """True when the export is one plain file (not a zip or a directory)."""
        return self.zip is None and not self.path.is_dir()

    def names(self) -> list[str]:
        """Every safe member path, sorted."""
        return sorted(self._members)

    def display(self, name: str) -> str:
        """`export.zip!member`, `dir/member`, or the file's own display name."""
        if self.is_single_file:
            return self.shown
        return f"{self.shown}!{name}" if self.zip is not None else f"{self.shown.rstrip('/')}/{name}"

    def size(self, name: str) -> int:
        """The member's (uncompressed) size in bytes."""
        m = self._members[name]
        return m.file_size if isinstance(m, zipfile.ZipInfo) else m.stat().st_size

    def open(self, name: str) -> BinaryIO:
        """A buffered binary stream over one member (bomb-guarded for zips)."""
        m = self._members[name]
        if isinstance(m, Path):
            return open(m, "rb", buffering=256 * 1024)
        assert self.zip is not None
        opts = self.opts
        if m.file_size > 1024 * 1024 and m.file_size / max(m.compress_size, 1) > opts.max_compression_ratio:
            raise UnreadableInput(
                bomb_message(self.shown, m, m.file_size, opts.max_archive_bytes, opts.max_compression_ratio)
            )
        guard = BombGuard(self.zip.open(m), m, self.shown, opts.max_archive_bytes, opts.max_compression_ratio)
        return io.BufferedReader(guard, buffer_size=128 * 1024)

    def head(self, name: str, n: int = 64 * 1024) -> bytes:
        """The first `n` bytes of a member."""
        with self.open(name) as fh:
            return fh.read(n)

    def close(self) -> None:
        """Release the zip handle."""
        if self.zip is not None:
            self.zip.close()


def is_zip(path: Path) -> bool:
    """True when `path` is a file starting with the zip magic bytes."""
    if not path.is_file():
        return False
    with open(path, "rb") as fh:
        return fh.read(4) == ZIP_MAGIC


def basename(name: str) -> str:
    """The last component of a member path."""
    return PurePosixPath(name).name


def parent(name: str) -> str:
    """The folder of a member path ('' at the root)."""
    p = str(PurePosixPath(name).parent)
    return "" if p == "." else p
