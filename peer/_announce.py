"""Announcing verified chunks to the supernode as they enter the cache, in batches.

`AnnouncingCache` is the host's `BlobCache` with two additions: after `put_many` has stored
chunks (bits set), it notes their indices; after it evicts a blob or discards a chunk, it
notes them as gone. The `Announcer` gathers notes for a moment and sends one `Announce` per
blob with the new indices as ranges, and one `Withdraw` per blob with the gone ones.

Rule: only chunks whose bits are set are ever announced (notes come after the store, or
from the cache's own bitmap), so a parent is never advertised for a chunk it cannot serve.
A failed announcement is dropped, not retried: after the session registers again, the
announcer re-reads every known blob's bitmap, announces all of it and withdraws what it
had announced before and no longer holds. Evictions by another process sharing the cache
directory (a `nydusd`) are not seen until then; the chunk server refuses those chunks.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Iterator, Sequence
from typing import Any

from protocol import MAX_RANGES, Announce, ChunkSet, Withdraw
from rafs import ChunkInfo, RafsError
from rafs._cache import BlobCache
from rafs._chunksource import BlobRef, FetchedChunk

from ._catalog import BlobCatalog
from ._session import SupernodeSession
from ._supernode import SupernodeClient

log = logging.getLogger("dfdaemon.announce")

Notify = Callable[[str, Sequence[int]], None]
NotifyGone = Callable[[str, Sequence[int] | None], None]  # None: every chunk of the blob


class AnnouncingCache(BlobCache):
    """A `BlobCache` that reports the chunks each `put_many` stored (from any thread)."""

    def __init__(self, cache_dir: str | os.PathLike[str], *, size_limit: int | None = None) -> None:
        super().__init__(cache_dir, size_limit=size_limit)
        self.notify: Notify | None = None
        self.notify_gone: NotifyGone | None = None

    def put_many(self, blob: BlobRef, fetched: Sequence[FetchedChunk]) -> int:
        stored = super().put_many(blob, fetched)
        if self.notify is not None and stored:  # none new: announced when they were stored
            self.notify(blob.blob_id, [chunk.info.index for chunk in fetched])
        return stored

    def evict_until(self, limit: int) -> list[str]:
        evicted = super().evict_until(limit)
        if self.notify_gone is not None:
            for blob_id in evicted:
                self.notify_gone(blob_id, None)
        return evicted

    def discard(self, blob_id: str, info: ChunkInfo) -> None:
        super().discard(blob_id, info)
        if self.notify_gone is not None:
            self.notify_gone(blob_id, [info.index])


class Announcer:
    """Batches notes of stored chunks into announcements (run `run` as a task)."""

    def __init__(
        self,
        session: SupernodeSession,
        catalog: BlobCatalog,
        cache: BlobCache,
        linger: float = 0.05,
    ) -> None:
        self.session = session
        self.catalog = catalog
        self.cache = cache
        self.linger = linger
        self._pending: dict[str, set[int]] = {}
        self._gone: dict[str, set[int]] = {}
        self._ready = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        self._tasks: set[asyncio.Task[None]] = set()
        self._announced: dict[str, ChunkSet] = {}  # since the last registration
        self.sent = 0

    def note(self, blob_id: str, indices: Iterable[int]) -> None:
        """Chunks now present (call on the loop's thread)."""
        added = set(indices)
        self._pending.setdefault(blob_id, set()).update(added)
        if blob_id in self._gone:
            self._gone[blob_id] -= added
        self._ready.set()

    def note_gone(self, blob_id: str, indices: Iterable[int] | None) -> None:
        """Chunks no longer present, None for the whole blob (call on the loop's thread)."""
        count = self.catalog.chunk_count(blob_id)
        if count is None:
            return  # never announced: nothing to withdraw
        gone = set(range(count)) if indices is None else set(indices)
        self._gone.setdefault(blob_id, set()).update(gone)
        if blob_id in self._pending:
            self._pending[blob_id] -= gone
        self._ready.set()

    def note_threadsafe(self, blob_id: str, indices: Sequence[int]) -> None:
        """`note` from any thread (the cache stores in worker threads)."""
        self._loop.call_soon_threadsafe(self.note, blob_id, list(indices))

    def note_gone_threadsafe(self, blob_id: str, indices: Sequence[int] | None) -> None:
        """`note_gone` from any thread (the cache evicts in worker threads)."""
        listed = None if indices is None else list(indices)
        self._loop.call_soon_threadsafe(self.note_gone, blob_id, listed)

    def resync(self) -> None:
        """Announce every chunk the cache holds of every blob with a known chunk count, and
        withdraw what was announced before and is gone now."""
        before, self._announced = self._announced, {}
        self.session.metrics.announced.set(0)
        self._spawn(self._note_present(list(self.catalog.known_counts()), before))

    def resync_blob(self, blob_id: str) -> None:
        self._spawn(self._note_present([blob_id]))

    def _spawn(self, job: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(job)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _note_present(
        self, blob_ids: list[str], before: dict[str, ChunkSet] | None = None
    ) -> None:
        for blob_id in blob_ids:
            try:
                bitmap = await asyncio.to_thread(self.cache.present_indices, blob_id)
            except (OSError, RafsError) as exc:
                log.warning("cannot read the bitmap of blob %s: %s", blob_id, exc)
                continue
            bits = int.from_bytes(bitmap, "little")
            if bits:
                self.note(blob_id, ChunkSet(bits.bit_length(), bits))
            announced = (before or {}).get(blob_id)
            if announced is not None and announced.bits & ~bits:
                self.note_gone(blob_id, ChunkSet(announced.chunk_count, announced.bits & ~bits))

    async def run(self) -> None:
        while True:
            await self._ready.wait()
            await asyncio.sleep(self.linger)
            self._ready.clear()
            gone, self._gone = self._gone, {}
            pending, self._pending = self._pending, {}
            for blob_id, indices in gone.items():
                await self._withdraw(blob_id, indices)
            for blob_id, indices in pending.items():
                await self._announce(blob_id, indices)

    async def _announce(self, blob_id: str, indices: set[int]) -> None:
        if sent := await self._send(Announce, blob_id, indices):
            log.debug("announced %d chunks of blob %s", sent, blob_id)

    async def _withdraw(self, blob_id: str, indices: set[int]) -> None:
        if sent := await self._send(Withdraw, blob_id, indices):
            log.info("withdrew %d chunks of blob %s", sent, blob_id)

    async def _send(
        self, kind: type[Announce] | type[Withdraw], blob_id: str, indices: set[int]
    ) -> int:
        """Tell the supernode, in messages of at most MAX_RANGES ranges; the chunks told. A
        failure drops the rest (the next registration announces what is held and withdraws
        what is gone)."""
        count = self.catalog.chunk_count(blob_id)
        if count is None or not self.session.registered:
            return 0
        told = 0
        chunks = ChunkSet.from_indices(count, (i for i in indices if i < count))
        for ranges in _batches(chunks):
            msg = kind(peer_id=self.session.peer_id, blob_id=blob_id, chunk_count=count,
                       ranges=ranges)  # fmt: skip
            if not await self.session.call(_sending(msg)):
                break
            self._count(msg)
            told += sum(end - start for start, end in ranges)
        return told

    def _count(self, msg: Announce | Withdraw) -> None:
        """Keep `_announced` and the gauge in step with what the supernode was told."""
        before = self._announced.get(msg.blob_id, ChunkSet(msg.chunk_count))
        if isinstance(msg, Announce):
            self.sent += 1
            after = before | msg.chunks()
        else:
            after = ChunkSet(msg.chunk_count, before.bits & ~msg.chunks().bits)
        self._announced[msg.blob_id] = after
        self.session.metrics.announced.inc(len(after) - len(before))

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


def _batches(chunks: ChunkSet) -> Iterator[tuple[tuple[int, int], ...]]:
    """The set's ranges, at most `MAX_RANGES` a message (a fragmented bitmap can have more)."""
    ranges = iter(chunks.ranges())
    while batch := tuple(itertools.islice(ranges, MAX_RANGES)):
        yield batch


def _sending(msg: Announce | Withdraw) -> Callable[[SupernodeClient], Awaitable[bool]]:
    """The session call that sends `msg`; True once the supernode took it."""

    async def send(client: SupernodeClient) -> bool:
        if isinstance(msg, Announce):
            await client.announce(msg)
        else:
            await client.withdraw(msg)
        return True

    return send
