"""Background prefetch: fetch a list of files (or every chunk) ahead of the reads.

Files are taken in the order of the list, a directory meaning every file below it; with
`everything`, all chunks of all blobs in blob order. The list is the bootstrap's own
prefetch table (`table_chunks`) unless the user names files or everything. Batches are
consecutive chunks of one blob, so the origin serves them in few range requests. At most
`parallel` batches are in flight, so a read (which never waits in this queue) still gets
through at once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from rafs import Bootstrap, ChunkInfo, CorruptBootstrap, Inode, RafsError
from rafs._chunksource import BlobRef, ChunkSource

log = logging.getLogger("nydusd.prefetch")


@dataclass
class PrefetchState:
    total_chunks: int = 0
    done_chunks: int = 0
    failed_batches: int = 0
    finished: bool = False


class Prefetcher:
    def __init__(
        self,
        boot: Bootstrap,
        source: ChunkSource,
        *,
        batch_bytes: int = 4 << 20,
        parallel: int = 2,
    ) -> None:
        self.boot = boot
        self.source = source
        self.batch_bytes = batch_bytes
        self.parallel = parallel
        self.state = PrefetchState()

    async def run(self, chunks: list[ChunkInfo]) -> PrefetchState:
        self.state.total_chunks = len(chunks)
        gate = asyncio.Semaphore(self.parallel)
        tasks = [asyncio.create_task(self._batch(b, cs, gate)) for b, cs in self._batches(chunks)]
        await asyncio.gather(*tasks)
        self.state.finished = True
        log.info(
            "prefetch done: %d chunks, %d failed batches",
            self.state.done_chunks,
            self.state.failed_batches,
        )
        return self.state

    def _batches(self, chunks: list[ChunkInfo]) -> Iterator[tuple[int, list[ChunkInfo]]]:
        batch: list[ChunkInfo] = []
        size = 0
        for chunk in chunks:
            if batch and (chunk.blob_index != batch[0].blob_index or size >= self.batch_bytes):
                yield batch[0].blob_index, batch
                batch, size = [], 0
            batch.append(chunk)
            size += chunk.compressed_size
        if batch:
            yield batch[0].blob_index, batch

    async def _batch(
        self, blob_index: int, chunks: list[ChunkInfo], gate: asyncio.Semaphore
    ) -> None:
        async with gate:
            try:
                await self.source.get(BlobRef.of(self.boot, blob_index), chunks)
                self.state.done_chunks += len(chunks)
            except (RafsError, OSError) as exc:
                self.state.failed_batches += 1
                log.warning(
                    "prefetch of %d chunks of blob %s failed: %s",
                    len(chunks),
                    self.boot.blobs[blob_index].blob_id,
                    exc,
                )


def unique_chunks(inodes: Iterable[Inode]) -> list[ChunkInfo]:
    """Chunks in first-seen order, each (blob, offset) once."""
    seen: set[tuple[int, int]] = set()
    out: list[ChunkInfo] = []
    for inode in inodes:
        for chunk in inode.chunks:
            key = (chunk.blob_index, chunk.compressed_offset)
            if key not in seen:
                seen.add(key)
                out.append(chunk)
    return out


def files_under(boot: Bootstrap, roots: Iterable[Inode]) -> Iterator[Inode]:
    """Regular files named by `roots`, a directory standing for everything below it."""
    for root in roots:
        stack = [root]
        while stack:
            node = stack.pop()
            if node.is_reg:
                yield node
            stack.extend(reversed(boot.children(node)))


def all_chunks(boot: Bootstrap) -> list[ChunkInfo]:
    """Every chunk of the image once, in blob order, so blobs are read front to back."""
    chunks = unique_chunks(boot.inodes.values())
    return sorted(chunks, key=lambda c: (c.blob_index, c.compressed_offset))


def table_roots(boot: Bootstrap) -> list[Inode]:
    """What the bootstrap's prefetch table names (inos), in table order."""
    by_ino = {inode.ino: inode for inode in boot.inodes.values()}
    for ino in boot.prefetch:
        if ino not in by_ino:
            raise CorruptBootstrap("prefetch table ino", ino)
    return [by_ino[ino] for ino in boot.prefetch]


def table_chunks(boot: Bootstrap) -> list[ChunkInfo]:
    """Chunks of the files the bootstrap's prefetch table names, each once, in table order."""
    return unique_chunks(files_under(boot, table_roots(boot)))
