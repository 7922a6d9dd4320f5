"""Announcing verified chunks to the supernode as they enter the cache, in batches.

`AnnouncingCache` is the host's `BlobCache` with one addition: after `put_many` has stored
chunks (bits set), it notes their indices. The `Announcer` gathers notes for a moment and
sends one `Announce` per blob with the indices as ranges.

Rule: only chunks whose bits are set are ever announced (notes come after the store, or
from the cache's own bitmap), so a parent is never advertised for a chunk it cannot serve.
A failed announcement is dropped, not retried: after the session registers again, the
announcer re-reads every known blob's bitmap and announces all of it.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Coroutine, Iterable, Sequence
from typing import Any

from protocol import Announce, ChunkSet
from rafs import RafsError
from rafs._cache import BlobCache
from rafs._chunksource import BlobRef, FetchedChunk

from ._catalog import BlobCatalog
from ._session import SupernodeSession
from ._supernode import SupernodeClient

log = logging.getLogger("dfdaemon.announce")

Notify = Callable[[str, Sequence[int]], None]


class AnnouncingCache(BlobCache):
    """A `BlobCache` that reports the chunks each `put_many` stored (from any thread)."""

    def __init__(self, cache_dir: str | os.PathLike[str], *, size_limit: int | None = None) -> None:
        super().__init__(cache_dir, size_limit=size_limit)
        self.notify: Notify | None = None

    def put_many(self, blob: BlobRef, fetched: Sequence[FetchedChunk]) -> int:
        stored = super().put_many(blob, fetched)
        if self.notify is not None and fetched:
            self.notify(blob.blob_id, [chunk.info.index for chunk in fetched])
        return stored


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
        self._ready = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        self._tasks: set[asyncio.Task[None]] = set()
        self._announced: dict[str, ChunkSet] = {}  # since the last registration
        self.sent = 0

    def note(self, blob_id: str, indices: Iterable[int]) -> None:
        """Chunks now present (call on the loop's thread)."""
        self._pending.setdefault(blob_id, set()).update(indices)
        self._ready.set()

    def note_threadsafe(self, blob_id: str, indices: Sequence[int]) -> None:
        """`note` from any thread (the cache stores in worker threads)."""
        self._loop.call_soon_threadsafe(self.note, blob_id, list(indices))

    def resync(self) -> None:
        """Announce every chunk the cache holds of every blob with a known chunk count."""
        self._announced.clear()
        self.session.metrics.announced.set(0)
        self._spawn(self._note_present(list(self.catalog.known_counts())))

    def resync_blob(self, blob_id: str) -> None:
        self._spawn(self._note_present([blob_id]))

    def _spawn(self, job: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(job)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _note_present(self, blob_ids: list[str]) -> None:
        for blob_id in blob_ids:
            try:
                bitmap = await asyncio.to_thread(self.cache.present_indices, blob_id)
            except (OSError, RafsError) as exc:
                log.warning("cannot read the bitmap of blob %s: %s", blob_id, exc)
                continue
            bits = int.from_bytes(bitmap, "little")
            if bits:
                self.note(blob_id, ChunkSet(bits.bit_length(), bits))

    async def run(self) -> None:
        while True:
            await self._ready.wait()
            await asyncio.sleep(self.linger)
            self._ready.clear()
            pending, self._pending = self._pending, {}
            for blob_id, indices in pending.items():
                await self._announce(blob_id, indices)

    async def _announce(self, blob_id: str, indices: set[int]) -> None:
        count = self.catalog.chunk_count(blob_id)
        if count is None or not self.session.registered:
            return  # announced with everything else after (re-)registration
        chunks = ChunkSet.from_indices(count, (i for i in indices if i < count))
        if not chunks:
            return
        msg = Announce(
            peer_id=self.session.peer_id,
            blob_id=blob_id,
            chunk_count=count,
            ranges=tuple(chunks.ranges()),
        )
        if not await self.session.call(lambda client: _sent(client, msg)):
            return  # failed: the next registration announces everything again
        self.sent += 1
        before = self._announced.get(blob_id, ChunkSet(count))
        self._announced[blob_id] = before | chunks
        self.session.metrics.announced.inc(len(self._announced[blob_id]) - len(before))
        log.debug("announced %d chunks of blob %s", len(chunks), blob_id)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


async def _sent(client: SupernodeClient, msg: Announce) -> bool:
    await client.announce(msg)
    return True
