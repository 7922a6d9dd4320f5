"""Seed mode: take seed tasks from the supernode, fetch their chunks from the origin,
store them in the cache (which announces them), and so serve them to peers.

Tasks arrive in heartbeat answers and by polling `GET seed-tasks` every `poll_interval`
(heartbeats are seconds apart; a peer waiting on `RetryLater` should not be). A task's
chunk table comes from the catalog or, failing that, from the bootstrap its origin URL
names (`_origins`).

A task's ranges are extended by `readahead` bytes of the chunks that follow them (lazy
readers read forward), so one task warms what the next reads need.

Rule: a seed stores only chunks the origin source verified; a task that cannot be done
(no chunk table, origin down) is logged and dropped: the supernode expires its flight and
the waiting peers go to the origin themselves.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from protocol import SeedTask, SeedTaskBatch, SeedTaskFailed
from rafs import ChunkInfo, RafsError
from rafs._cache import BlobCache

from ._catalog import BlobCatalog, BlobEntry
from ._errors import PeerError
from ._mesh import origin_get
from ._metrics import PeerMetrics
from ._origins import OriginPool, RegistryBlobUrl
from ._session import SupernodeSession
from ._supernode import SupernodeClient

log = logging.getLogger("dfdaemon.seed")


class Seeder:
    """Seed tasks in, verified chunks into the cache (run `run` as a task)."""

    def __init__(
        self,
        session: SupernodeSession,
        cache: BlobCache,
        catalog: BlobCatalog,
        origins: OriginPool,
        metrics: PeerMetrics,
        *,
        workers: int = 2,
        poll_interval: float = 0.2,
        batch_bytes: int = 8 << 20,
        readahead: int = 4 << 20,
    ) -> None:
        self.session = session
        self.cache = cache
        self.catalog = catalog
        self.origins = origins
        self.metrics = metrics
        self.workers = workers
        self.poll_interval = poll_interval
        self.batch_bytes = batch_bytes
        self.readahead = readahead
        self._queue: asyncio.Queue[SeedTask] = asyncio.Queue()
        self._seen: dict[str, None] = {}
        self._inflight: dict[str, set[int]] = {}  # blob -> chunk indices a worker is fetching

    def submit(self, tasks: Sequence[SeedTask]) -> None:
        for task in tasks:
            if task.task_id not in self._seen:
                self._seen[task.task_id] = None
                self._queue.put_nowait(task)
        while len(self._seen) > 10_000:
            del self._seen[next(iter(self._seen))]

    async def run(self) -> None:
        async with asyncio.TaskGroup() as group:
            for _ in range(self.workers):
                group.create_task(self._work())
            group.create_task(self._poll())

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.poll_interval)
            batch = await self.session.call(self._take)
            if batch is not None:
                self.submit(batch.tasks)

    async def _take(self, client: SupernodeClient) -> SeedTaskBatch:
        return await client.seed_tasks(self.session.peer_id)

    async def _work(self) -> None:
        while True:
            task = await self._queue.get()
            try:
                await self.seed(task)
            except (PeerError, RafsError, OSError) as exc:
                log.error("seed task %s (blob %s) failed: %s", task.task_id, task.blob_id, exc)
                await self._report_failure(task, str(exc))

    async def _report_failure(self, task: SeedTask, error: str) -> None:
        """Tell the supernode, so peers waiting on the task go to the origin now."""
        msg = SeedTaskFailed(
            peer_id=self.session.peer_id,
            task_id=task.task_id,
            blob_id=task.blob_id,
            error=error[:1000] or "failed",  # `Text` allows 4,096
        )
        await self.session.call(lambda client: client.seed_task_failed(msg))

    async def seed(self, task: SeedTask) -> int:
        """Do one task; the number of chunks fetched from the origin."""
        entry = await self._entry(task)
        wanted = _wanted(task, entry, self.readahead)
        missing = await asyncio.to_thread(self.cache.missing, task.blob_id, wanted)
        inflight = self._inflight.setdefault(task.blob_id, set())
        missing = [c for c in missing if c.index not in inflight]  # another worker has these
        inflight.update(c.index for c in missing)
        source = self.origins.source(RegistryBlobUrl.parse(task.origin_url))
        try:
            for group in _groups(missing, self.batch_bytes):
                fetched = await origin_get(source, entry.ref, group, self.metrics)
                await asyncio.to_thread(self.cache.put_many, entry.ref, fetched)
                self.metrics.seed_chunks.inc(len(fetched))
        finally:
            inflight.difference_update(c.index for c in missing)
            if not inflight:
                self._inflight.pop(task.blob_id, None)
        self.metrics.seed_tasks.inc()
        log.info("seed task %s: blob %s, %d chunks wanted, %d fetched from the origin",
                 task.task_id, task.blob_id, len(wanted), len(missing))  # fmt: skip
        return len(missing)

    async def _entry(self, task: SeedTask) -> BlobEntry:
        entry = self.catalog.get(task.blob_id)
        if entry is None or not entry.chunks:
            entry = self.catalog.add(await self.origins.chunk_table(task.blob_id, task.origin_url))
        if task.chunk_count is not None and task.chunk_count != entry.chunk_count:
            log.warning(
                "seed task %s says blob %s has %d chunks, its bootstrap says %d",
                task.task_id, task.blob_id, task.chunk_count, entry.chunk_count,
            )  # fmt: skip
        return entry


def _wanted(task: SeedTask, entry: BlobEntry, readahead: int) -> list[ChunkInfo]:
    """The task's chunks that the chunk table names (all of them for a whole-blob task),
    each range followed by up to `readahead` bytes of the chunks after it: a reader that
    wanted chunk i will most likely want i + 1 next, and should not wait for a second task."""
    if not task.ranges:
        return [entry.chunks[i] for i in sorted(entry.chunks)]
    indices: set[int] = set()
    for start, end in task.ranges:
        indices.update(i for i in range(start, end) if i in entry.chunks)
        indices.update(_following(entry, end, readahead))
    return [entry.chunks[i] for i in sorted(indices)]


def _following(entry: BlobEntry, start: int, budget: int) -> list[int]:
    """Indices from `start` on, in order, while their stored bytes fit in `budget`."""
    found = []
    index = start
    while index < entry.chunk_count and index in entry.chunks:
        budget -= entry.chunks[index].compressed_size
        if budget < 0:
            break
        found.append(index)
        index += 1
    return found


def _groups(chunks: Sequence[ChunkInfo], limit: int) -> list[list[ChunkInfo]]:
    """Chunks in blob order, cut every `limit` stored bytes."""
    groups: list[list[ChunkInfo]] = []
    size = limit
    for chunk in sorted(chunks, key=lambda c: c.compressed_offset):
        if size + chunk.compressed_size > limit:
            groups.append([])
            size = 0
        groups[-1].append(chunk)
        size += chunk.compressed_size
    return groups
