"""`MeshSource`: the `ChunkSource` between the cache and the origin (cache -> mesh -> origin).

For the chunks asked it asks the supernode where to fetch them (`ScheduleRequest`), then
per plan:

- `FromParents`: the chunks are cut into batches of consecutive indices; every parent of
  the plan runs `depth` workers that take batches from one shared queue (so requests to a
  parent are pipelined and faster parents take more), verify every chunk as its frame
  arrives, and give back what they did not deliver, for another parent;
- `FromOrigin`: the chunks come from the fallback source (the origin);
- `RetryLater`: ask again after the hint (at most `max_retry_pause`: a seed is usually
  quicker than the supernode's hint), for at most `max_rounds` rounds and `max_wait`
  seconds, then go to the origin.

When the origin then fails, the mesh is asked once more (for at most `after_origin_wait`
seconds): a peer may have got the chunks meanwhile. Only if it has not does `get` fail.

A plan whose parents all failed earlier in this fetch goes to the origin at once: the
failures were reported before the plan was asked for, so the supernode still names those
parents only while it has too few reports to suspend them. Once it suspends a parent, it
names it to nobody and answers for the chunks only that parent held with `FromOrigin` for a
few askers and `RetryLater` for the rest, who then fetch from those; so a dead parent costs
one failed request per fetch until then, and at most `max_wait` after.

After each round it reports per parent what happened (`PieceResults`). A parent that sent
a chunk with a wrong digest is reported and distrusted for the blob for good; a failing
or slow parent is dropped for the rest of the fetch. With no supernode (not registered,
unreachable, or a blob without a chunk table) everything goes to the origin.

Rule: a chunk is returned only after `verify_chunk` passed on the bytes received; nothing
a parent sent is trusted, stored or announced before that.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial

from protocol import (
    MAX_RANGES,
    ChunkSet,
    FailureKind,
    FromOrigin,
    FromParents,
    Parent,
    ParentResult,
    PieceResults,
    RetryLater,
    ScheduleAnswer,
    ScheduleRequest,
)
from rafs import ChunkInfo, RafsError
from rafs._cache import BlobCache
from rafs._chunksource import BlobRef, ChunkSource, FetchedChunk, verify_chunk

from ._catalog import BlobCatalog, BlobEntry
from ._errors import ChunkTableMissing, ParentError
from ._metrics import PeerMetrics
from ._parentclient import ChunkTransport
from ._parents import Batch, BatchQueue, ParentBoard, SwitchPolicy, cut_batches
from ._session import SupernodeSession

log = logging.getLogger("dfdaemon.mesh")

OriginFetch = Callable[[list[ChunkInfo]], Awaitable[list[FetchedChunk]]]

VERIFY_INLINE_BYTES = 64 << 10  # smaller chunks are verified on the loop, larger in a thread


@dataclass(frozen=True, slots=True)
class MeshConfig:
    """Tunables of the mesh fetcher (sizes in bytes, times in seconds)."""

    batch_chunks: int = 16
    batch_bytes: int = 4 << 20
    depth: int = 2  # requests in flight per parent
    max_rounds: int = 400  # a bound on the loop; `max_wait` is what ends a long wait
    max_wait: float = 20.0  # longest a fetch waits on the mesh before the origin
    after_origin_wait: float = 5.0  # longest it waits on the mesh after the origin failed
    idle_retry: float = 0.1  # pause after a round without progress (doubles)
    max_retry_pause: float = 0.2  # a RetryLater hint longer than this is cut to it
    base_timeout: float = 5.0  # a batch may take this long plus its size at `min_rate`
    min_rate: float = 256 << 10
    switch: SwitchPolicy = field(default_factory=SwitchPolicy)


class Mesh:
    """What every `MeshSource` of one daemon shares: the supernode session, the transport,
    the distrust list, the metrics, and the cache verified chunks are kept in as they come.

    With `cache` set, every batch a fetch receives (and every origin answer) is stored at
    once, in the background, so it is announced while the rest of the `get` still waits:
    peers waiting on this one get the chunks a whole `get` earlier (the `CachedSource`
    above stores them again after the `get`, which finds them present and does nothing).
    """

    def __init__(
        self,
        session: SupernodeSession,
        transport: ChunkTransport,
        metrics: PeerMetrics,
        config: MeshConfig | None = None,
        cache: BlobCache | None = None,
    ) -> None:
        self.session = session
        self.transport = transport
        self.metrics = metrics
        self.config = config or MeshConfig()
        self.cache = cache
        self._distrusted: dict[str, set[str]] = {}
        self._stores: set[asyncio.Task[None]] = set()

    def keep(self, blob: BlobRef, chunks: list[FetchedChunk]) -> None:
        """Store verified chunks in the background (no-op without a cache)."""
        if self.cache is None or not chunks:
            return
        task = asyncio.create_task(self._store(self.cache, blob, chunks))
        self._stores.add(task)
        task.add_done_callback(self._stores.discard)

    async def _store(self, cache: BlobCache, blob: BlobRef, chunks: list[FetchedChunk]) -> None:
        try:
            await asyncio.to_thread(cache.put_many, blob, chunks)
        except (OSError, RafsError) as exc:  # the CachedSource above tries again
            log.info("early store of %d chunks of blob %s failed: %s",
                     len(chunks), blob.blob_id, exc)  # fmt: skip

    def distrusted(self, blob_id: str) -> set[str]:
        """Parents never to be used again for this blob (they sent a wrong digest)."""
        return self._distrusted.setdefault(blob_id, set())

    async def schedule(self, msg: ScheduleRequest) -> ScheduleAnswer | None:
        self.metrics.schedule_requests.inc()
        return await self.session.call(lambda client: client.schedule(msg))

    async def report(self, blob_id: str, results: tuple[ParentResult, ...]) -> None:
        if not results:
            return
        msg = PieceResults(peer_id=self.session.peer_id, blob_id=blob_id, results=results)
        await self.session.call(lambda client: client.piece_results(msg))


class MeshSource:
    """Chunks from peers the supernode names, else from `fallback` (the origin)."""

    def __init__(self, mesh: Mesh, catalog: BlobCatalog, fallback: ChunkSource | None) -> None:
        self.mesh = mesh
        self.catalog = catalog
        self.fallback = fallback

    async def get(self, blob: BlobRef, chunks: Sequence[ChunkInfo]) -> list[FetchedChunk]:
        wanted = {chunk.index: chunk for chunk in chunks}
        entry = self.catalog.get(blob.blob_id)
        found: dict[int, FetchedChunk] = {}
        if entry is not None and self.mesh.session.registered:
            fetch = _Fetch(self.mesh, blob, entry, wanted)
            fetch.origin = partial(self._origin_then_mesh, blob, entry)
            found = await fetch.run_with_origin()
        else:
            self.mesh.metrics.mesh_bypassed.inc(len(wanted))
        missing = [info for index, info in wanted.items() if index not in found]
        if missing:
            for chunk in await self._origin_then_mesh(blob, entry, missing):
                found[chunk.info.index] = chunk
        return [_as_asked(found[chunk.index], chunk) for chunk in chunks]

    async def _origin_then_mesh(
        self, blob: BlobRef, entry: BlobEntry | None, chunks: list[ChunkInfo]
    ) -> list[FetchedChunk]:
        try:
            return await self._from_origin(blob, chunks)
        except (RafsError, OSError) as exc:
            if entry is None or not self.mesh.session.registered:
                raise
            log.info("origin failed for %d chunks of blob %s (%s): asking the mesh again",
                     len(chunks), blob.blob_id, exc)  # fmt: skip
            wanted = {chunk.index: chunk for chunk in chunks}
            wait = self.mesh.config.after_origin_wait
            found = await _Fetch(self.mesh, blob, entry, wanted, max_wait=wait).run()
            if len(found) < len(wanted):
                raise
            return list(found.values())

    async def _from_origin(self, blob: BlobRef, chunks: list[ChunkInfo]) -> list[FetchedChunk]:
        if self.fallback is None:
            raise ChunkTableMissing(blob.blob_id, "the mesh could not serve it and no origin")
        return await origin_get(self.fallback, blob, chunks, self.mesh.metrics)

    async def close(self) -> None:
        if self.fallback is not None:
            await self.fallback.close()


async def origin_get(
    origin: ChunkSource, blob: BlobRef, chunks: Sequence[ChunkInfo], metrics: PeerMetrics
) -> list[FetchedChunk]:
    """Chunks from the origin (verified by it), counted as origin bytes."""
    fetched = await origin.get(blob, chunks)
    metrics.origin_chunks.inc(len(fetched))
    metrics.origin_bytes.inc(sum(len(chunk.stored) for chunk in fetched))
    return fetched


class _Fetch:
    """One `get` through the mesh: rounds of schedule, fetch, report."""

    def __init__(
        self,
        mesh: Mesh,
        blob: BlobRef,
        entry: BlobEntry,
        wanted: Mapping[int, ChunkInfo],
        max_wait: float | None = None,
    ) -> None:
        self.mesh = mesh
        self.config = mesh.config
        self.max_wait = self.config.max_wait if max_wait is None else max_wait
        self.blob = blob
        self.entry = entry
        self.wanted = wanted
        self.found: dict[int, FetchedChunk] = {}
        self.board = ParentBoard(blob.blob_id, mesh.distrusted(blob.blob_id), mesh.config.switch)
        self.to_origin: set[int] = set()
        # Set by `MeshSource.get`: chunks the supernode sends to the origin are fetched at
        # once, beside the rounds, not after them (another peer may be waiting on them).
        self.origin: OriginFetch | None = None
        self._origin_jobs: list[asyncio.Task[list[FetchedChunk]]] = []

    @property
    def pending(self) -> set[int]:
        return set(self.wanted) - set(self.found) - self.to_origin

    async def run_with_origin(self) -> dict[int, FetchedChunk]:
        """`run`, plus the chunks fetched from the origin while it ran."""
        try:
            found = await self.run()
            for chunks in await asyncio.gather(*self._origin_jobs):
                found.update((chunk.info.index, chunk) for chunk in chunks)
            return found
        finally:
            for job in self._origin_jobs:
                job.cancel()

    async def run(self) -> dict[int, FetchedChunk]:
        """The chunks the mesh delivered; the rest (and FromOrigin ones) are the caller's."""
        deadline = time.monotonic() + self.max_wait
        idle = self.config.idle_retry
        for _ in range(self.config.max_rounds):
            pending = self.pending
            if not pending or time.monotonic() >= deadline:
                break
            answer = await self.mesh.schedule(self._request(pending))
            if answer is None:
                break
            pause = await self._round(answer, pending)
            if not self.pending:
                break
            progressed = len(self.pending) < len(pending)
            pause = pause if pause is not None else (0.0 if progressed else idle)
            idle = idle if progressed else min(idle * 2, 2.0)
            await asyncio.sleep(max(0.0, min(pause, deadline - time.monotonic())))
        return self.found

    def _request(self, pending: set[int]) -> ScheduleRequest:
        count = self.entry.chunk_count
        ranges = ChunkSet.from_indices(count, pending).ranges()
        return ScheduleRequest(
            peer_id=self.mesh.session.peer_id,
            blob_id=self.blob.blob_id,
            chunk_count=count,
            wanted=tuple(itertools.islice(ranges, MAX_RANGES)),  # the rest in the next round
            origin_url=self.entry.origin_url,
        )

    async def _round(self, answer: ScheduleAnswer, pending: set[int]) -> float | None:
        """Follow one answer; the pause a RetryLater asks for (None: none did)."""
        plans: list[FromParents] = []
        pause: float | None = None
        for plan in answer.plans:
            if isinstance(plan, FromParents) and self._any_usable(plan):
                plans.append(plan)
            elif isinstance(plan, FromParents | FromOrigin):  # told so, or only failed parents
                self._send_to_origin([i for i in range(plan.start, plan.end) if i in pending])
            elif isinstance(plan, RetryLater):
                hint = min(plan.retry_after_ms / 1000, self.config.max_retry_pause)
                pause = hint if pause is None else min(pause, hint)
        if plans:
            await self._from_parents(plans, pending)
            await self.mesh.report(self.blob.blob_id, self.board.take_results())
        return pause

    def _send_to_origin(self, indices: list[int]) -> None:
        new = [i for i in indices if i not in self.to_origin]
        self.to_origin.update(new)
        if new and self.origin is not None:
            job = asyncio.ensure_future(self._kept(self.origin([self.wanted[i] for i in new])))
            self._origin_jobs.append(job)

    async def _kept(self, fetching: Awaitable[list[FetchedChunk]]) -> list[FetchedChunk]:
        chunks = await fetching
        self.mesh.keep(self.blob, chunks)
        return chunks

    def _any_usable(self, plan: FromParents) -> bool:
        """Whether a parent of the plan is still trusted and not dropped in this fetch (the
        supernode keeps naming a dead parent until it expires: do not wait for that)."""
        return any(self.board.usable(parent.peer_id) for parent in plan.parents)

    # --- parents ------------------------------------------------------------------------

    async def _from_parents(self, plans: list[FromParents], pending: set[int]) -> None:
        sizes = {index: info.compressed_size for index, info in self.wanted.items()}
        batches: list[Batch] = []
        parents: dict[str, Parent] = {}
        for plan in plans:
            indices = [i for i in range(plan.start, plan.end) if i in pending]
            usable = tuple(p for p in plan.parents if self.board.usable(p.peer_id))
            for parent in usable:
                parents.setdefault(parent.peer_id, parent)
            cut = cut_batches(indices, sizes, self.config.batch_chunks, self.config.batch_bytes)
            batches.extend(Batch(run, usable) for run in cut if usable)
        queue, changed = BatchQueue(batches), asyncio.Condition()
        workers = [
            self._worker(parent, queue, changed)
            for parent in parents.values()
            for _ in range(self.config.depth)
        ]
        await asyncio.gather(*workers)

    async def _worker(self, parent: Parent, queue: BatchQueue, changed: asyncio.Condition) -> None:
        """Take batches for `parent` until none is left it may serve."""
        pid = parent.peer_id
        while True:
            async with changed:
                while (batch := queue.take(pid, self._wanted_parent(pid))) is None:
                    if queue.in_flight == 0 or not self._wanted_parent(pid):
                        return
                    await changed.wait()
            missing = await self._fetch_batch(parent, batch)
            async with changed:
                queue.finish(batch, pid, missing)
                changed.notify_all()

    def _wanted_parent(self, parent_id: str) -> bool:
        return self.board.usable(parent_id) and not self.board.is_slow(parent_id)

    async def _fetch_batch(self, parent: Parent, batch: Batch) -> list[int]:
        """Fetch one batch from one parent; the indices it did not deliver."""
        started = time.monotonic()
        received: dict[int, FetchedChunk] = {}
        mismatched: list[int] = []
        failure: ParentError | None = None
        try:
            await self._receive(parent, batch, received, mismatched)
        except ParentError as exc:
            failure = exc
        self._account(parent.peer_id, received, mismatched, failure, time.monotonic() - started)
        self.found.update(received)
        self.mesh.keep(self.blob, list(received.values()))
        return [index for index in batch.indices if index not in received]

    async def _receive(
        self, parent: Parent, batch: Batch, received: dict[int, FetchedChunk], bad: list[int]
    ) -> None:
        """Frames into verified chunks; stops at the first wrong digest."""
        size = sum(self.wanted[i].compressed_size for i in batch.indices)
        timeout = self.config.base_timeout + size / self.config.min_rate
        stream = self.mesh.transport.fetch(parent, self.blob.blob_id, batch.start, batch.end,
                                           timeout)  # fmt: skip
        async with contextlib.aclosing(stream) as frames:
            async for frame in frames:
                index = frame.chunk_index
                if frame.blob_id != self.blob.blob_id or index not in batch.indices:
                    raise _unexpected(parent, self.blob.blob_id, f"frame for chunk {index}")
                chunk = await _verified(self.blob, self.wanted[index], frame.payload)
                if chunk is None:
                    bad.append(index)
                    return
                received[index] = chunk

    def _account(
        self,
        parent_id: str,
        received: dict[int, FetchedChunk],
        mismatched: list[int],
        failure: ParentError | None,
        seconds: float,
    ) -> None:
        metrics = self.mesh.metrics
        if received:
            size = sum(len(chunk.stored) for chunk in received.values())
            self.board.record_chunks(parent_id, len(received), size, seconds)
            metrics.peer_bytes_in.inc(size)
            metrics.peer_chunks_in.inc(len(received))
        if mismatched:
            log.warning("parent %s sent blob %s chunks %s with a wrong digest: distrusted",
                        parent_id, self.blob.blob_id, mismatched)  # fmt: skip
            self.board.record_mismatch(parent_id, mismatched)
            metrics.digest_mismatches.inc(len(mismatched))
        elif failure is not None:
            log.info("%s", failure)
            self.board.record_failure(parent_id, failure.kind)
            metrics.parent_failures.labels(kind=failure.kind.value).inc()


def _unexpected(parent: Parent, blob_id: str, what: str) -> ParentError:
    return ParentError(parent.peer_id, blob_id, FailureKind.PROTOCOL, f"unexpected {what}")


async def _verified(blob: BlobRef, info: ChunkInfo, payload: bytes) -> FetchedChunk | None:
    """The verified chunk, or None when the bytes are not the chunk the record names."""
    try:
        if len(payload) <= VERIFY_INLINE_BYTES:
            return verify_chunk(blob, info, payload)
        return await asyncio.to_thread(verify_chunk, blob, info, payload)
    except RafsError:
        return None


def _as_asked(chunk: FetchedChunk, info: ChunkInfo) -> FetchedChunk:
    return chunk if chunk.info == info else FetchedChunk(info, chunk.stored, chunk.data)
