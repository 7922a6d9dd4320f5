"""Write-behind: changes to the in-memory scheduler reach the database in batches.

Request handlers never wait on the database. Every `interval` seconds a background task
drains what changed (a `ChangeSource` hands over one `WriteBatch`, values read at that
moment, so a bitmap announced to a hundred times between flushes is written once) and
applies it in one transaction. A batch that fails stays queued, ahead of later ones, and
is retried on the next tick, so batches always land in order. `close` flushes once more:
a clean shutdown loses nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from typing import Protocol

from ._errors import DatabaseError
from ._metrics import Metrics
from ._records import WriteBatch
from ._repo import Repository

log = logging.getLogger("supernode.writeback")


class ChangeSource(Protocol):
    """Hands over (and forgets) everything changed since the last call."""

    def drain(self) -> WriteBatch: ...


class WriteBehind:
    """Flushes a `ChangeSource` to a `Repository`, in the background and on demand."""

    def __init__(
        self, repo: Repository, source: ChangeSource, metrics: Metrics, interval: float = 0.2
    ) -> None:
        self._repo = repo
        self._source = source
        self._metrics = metrics
        self._interval = interval
        self._backlog: deque[WriteBatch] = deque()
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self._stop = asyncio.Event()

    @property
    def backlog(self) -> int:
        """Batches drained but not yet written (more than zero only after failures)."""
        return len(self._backlog)

    async def flush(self) -> int:
        """Write everything changed so far; returns the number of records written."""
        async with self._lock:
            batch = self._source.drain()
            if len(batch):
                self._backlog.append(batch)
            written = 0
            while self._backlog:
                written += await self._apply(self._backlog[0])
                self._backlog.popleft()
            return written

    async def _apply(self, batch: WriteBatch) -> int:
        started = time.perf_counter()
        try:
            await self._repo.apply(batch)
        except DatabaseError:
            self._metrics.flush_errors.inc()
            raise
        self._metrics.flush_seconds.observe(time.perf_counter() - started)
        self._metrics.flushed.inc(len(batch))
        return len(batch)

    def start(self) -> None:
        self._stop.clear()
        self._task = asyncio.create_task(self._run(), name="supernode-writeback")

    async def close(self) -> None:
        """Stop the background task (never mid-write) and flush what is left."""
        self._stop.set()
        if self._task is not None:
            await self._task
            self._task = None
        await self.flush()

    async def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self._interval)
            try:
                await self.flush()
            except DatabaseError as exc:
                log.warning(
                    "write-behind flush failed (%d batches queued): %s", len(self._backlog), exc
                )
