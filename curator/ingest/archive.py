"""Read one member of a zip export in memory, refusing unsafe paths and decompression bombs.

Members are streamed from the archive and never extracted to disk. Limits are checked twice: from
the zip headers before opening, and again on the bytes actually inflated, because headers can lie.
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from curator.ingest.base import UnreadableInput
from curator.ingest.sources import binary_size

EXPORT_MEMBER = "conversations.json"
ZIP_MAGIC = b"PK\x03\x04"


def unsafe_reason(name: str) -> str | None:
    """Why a member name would escape an extraction directory (absolute, drive, '..'), or None."""
    posix = PurePosixPath(name.replace("\\", "/"))
    if posix.is_absolute() or (len(name) > 1 and name[1] == ":"):
        return "is an absolute path"
    if ".." in posix.parts:
        return "contains '..' and would escape the target directory"
    return None


class BombGuard(io.RawIOBase):
    """Counts inflated bytes and stops when they exceed the archive limits, whatever the headers said."""

    def __init__(self, inner: BinaryIO, info: zipfile.ZipInfo, archive: str, max_bytes: int, max_ratio: float):
        self.inner, self.info, self.archive = inner, info, archive
        self.max_bytes, self.max_ratio = max_bytes, max_ratio
        self.out = 0

    def readable(self) -> bool:
        """Always readable (io protocol)."""
        return True

    def readinto(self, buf: memoryview) -> int:  # type: ignore[override]
        """Fill `buf` from the member, raising UnreadableInput once a limit is crossed."""
        data = self.inner.read(len(buf))
        self.out += len(data)
        ratio = self.out / max(self.info.compress_size, 1)
        if self.out > self.max_bytes or (self.out > 1024 * 1024 and ratio > self.max_ratio):
            raise UnreadableInput(bomb_message(self.archive, self.info, self.out, self.max_bytes, self.max_ratio))
        buf[: len(data)] = data
        return len(data)


def bomb_message(archive: str, info: zipfile.ZipInfo, size: int, max_bytes: int, max_ratio: float) -> str:
    """Why an archive member is refused as a possible decompression bomb, with the limits to raise."""
    ratio = size / max(info.compress_size, 1)
    return (
        f"{archive}!{info.filename}: refusing a possible decompression bomb: {size} bytes inflated from "
        f"{info.compress_size} (ratio {ratio:.0f}); limits are ingest.max_archive_bytes="
        f"{binary_size(max_bytes)} and ingest.max_compression_ratio={max_ratio:g}. "
        "Raise them if you trust this archive."
    )


def find_member(zf: zipfile.ZipFile, display: str, wanted: str = EXPORT_MEMBER) -> zipfile.ZipInfo:
    """The safe member named `wanted` (at any depth; the shallowest wins), or UnreadableInput."""
    refused = []
    candidates = []
    for info in zf.infolist():
        if PurePosixPath(info.filename.replace("\\", "/")).name != wanted or info.is_dir():
            continue
        why = unsafe_reason(info.filename)
        if why:
            refused.append(f"{info.filename!r} {why}")
        else:
            candidates.append(info)
    if not candidates:
        detail = f"; refused: {'; '.join(refused)}" if refused else ""
        raise UnreadableInput(f"{display}: no safe {wanted} in this zip{detail}. Is it a chat export?")
    return min(candidates, key=lambda i: (i.filename.count("/"), i.filename))


def open_member(path: Path, display: str, max_bytes: int, max_ratio: float) -> tuple[BinaryIO, str]:
    """A buffered stream over the export's conversations.json and its display name `x.zip!member`."""
    try:
        zf = zipfile.ZipFile(path)
    except (OSError, zipfile.BadZipFile) as exc:
        raise UnreadableInput(f"{display}: not a readable zip archive ({exc}); re-download the export") from exc
    total = sum(i.file_size for i in zf.infolist())
    if total > max_bytes:
        zf.close()
        raise UnreadableInput(
            f"{display}: members add up to {total} bytes, above ingest.max_archive_bytes={binary_size(max_bytes)}; "
            "raise it if you trust this archive"
        )
    info = find_member(zf, display)
    if info.file_size > 1024 * 1024 and info.file_size / max(info.compress_size, 1) > max_ratio:
        zf.close()
        raise UnreadableInput(bomb_message(display, info, info.file_size, max_bytes, max_ratio))
    guard = BombGuard(zf.open(info), info, display, max_bytes, max_ratio)
    return io.BufferedReader(guard, buffer_size=128 * 1024), f"{display}!{info.filename}"
