"""Progress of a job made of many steps (layers to convert, blobs to push), for a person.

The work code reports through `Steps`; it never knows whether anyone watches. `QuietSteps`
shows nothing (not a terminal, or tests); `TerminalSteps` draws one rich progress line per
step on stderr while the job runs, and leaves no lines behind.
"""

from __future__ import annotations

from types import TracebackType
from typing import Protocol

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TextColumn,
    TransferSpeedColumn,
)


class Step(Protocol):
    def advance(self, count: int) -> None:
        """`count` more bytes of the step's total are done."""

    def describe(self, text: str) -> None:
        """The step moved on to another phase (downloading -> building)."""

    def finish(self, note: str, size: int | None = None) -> None:
        """The step is over; `note` says how (built, cached, pushed, present), `size` how
        many bytes it was about, if that was not known at the start."""


class Steps(Protocol):
    def step(self, label: str, total: int | None = None) -> Step: ...


class _QuietStep:
    def advance(self, count: int) -> None:
        return None

    def describe(self, text: str) -> None:
        return None

    def finish(self, note: str, size: int | None = None) -> None:
        return None


class QuietSteps:
    def step(self, label: str, total: int | None = None) -> Step:
        return _QuietStep()


class _TerminalStep:
    def __init__(self, progress: Progress, label: str, total: int | None) -> None:
        self.progress = progress
        self.label = label
        self.task: TaskID = progress.add_task(label, total=total)

    def advance(self, count: int) -> None:
        self.progress.advance(self.task, count)

    def describe(self, text: str) -> None:
        self.progress.update(self.task, description=f"{self.label} {text}")

    def finish(self, note: str, size: int | None = None) -> None:
        total = size if size is not None else self.progress.tasks[self._index()].total
        self.progress.update(
            self.task, description=f"{self.label} {note}", completed=total or 0, total=total or 0
        )

    def _index(self) -> int:
        return next(i for i, t in enumerate(self.progress.tasks) if t.id == self.task)


class TerminalSteps:
    """Use as a context manager around the job."""

    def __init__(self) -> None:
        columns = (
            SpinnerColumn(),
            TextColumn("{task.description}"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
        )
        self.progress = Progress(*columns, console=Console(stderr=True), transient=True)

    def __enter__(self) -> TerminalSteps:
        self.progress.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.progress.stop()

    def step(self, label: str, total: int | None = None) -> Step:
        return _TerminalStep(self.progress, label, total)
