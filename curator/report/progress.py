"""Thin wrapper over rich's Progress so engines report progress without depending on rich's API."""

from __future__ import annotations

from types import TracebackType

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)


class RichProgress:
    """Progress bars on stderr: one task per pass (ingest of an input, a phase over the parts)."""

    def __init__(self, console: Console | None = None) -> None:
        self._progress = Progress(
            SpinnerColumn(),
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console or Console(stderr=True),
            transient=False,
        )

    def __enter__(self) -> RichProgress:
        self._progress.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._progress.stop()

    def task(self, label: str, total: int | None) -> TaskID:
        return self._progress.add_task(label, total=total)

    def advance(self, task: TaskID, n: int) -> None:
        self._progress.advance(task, n)

    def finish(self, task: TaskID, total: int) -> None:
        self._progress.update(task, total=total, completed=total)
