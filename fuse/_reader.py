"""Reading byte ranges of image files through a `ChunkSource`.

A read is cut into the chunks it overlaps; chunks of one blob are asked for in one call
(so the source can merge them into one range request), different blobs concurrently. A
small in-memory LRU of recently decoded chunks serves the kernel's 128 KiB reads of one
1 MiB chunk without decoding it eight times. Bytes between chunk records (holes) are zeros.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Callable
from dataclasses import dataclass

from rafs import Bootstrap, ChunkInfo, Inode
from rafs._chunksource import BlobRef, ChunkSource
from rafs._v5layout import INODE_HAS_HOLE


@dataclass
class ReadStats:
    reads: int = 0
    bytes_read: int = 0
    chunks_fetched: int = 0
    memo_hits: int = 0


class ChunkMemo:
    """LRU of decoded chunks keyed by (blob index, compressed offset), bounded in bytes."""

    def __init__(self, limit_bytes: int) -> None:
        self.limit = limit_bytes
        self.used = 0
        self._items: collections.OrderedDict[tuple[int, int], bytes] = collections.OrderedDict()

    def get(self, key: tuple[int, int]) -> bytes | None:
        data = self._items.get(key)
        if data is not None:
            self._items.move_to_end(key)
        return data

    def put(self, key: tuple[int, int], data: bytes) -> None:
        if key in self._items or len(data) > self.limit:
            return
        self._items[key] = data
        self.used += len(data)
        while self.used > self.limit:
            _, old = self._items.popitem(last=False)
            self.used -= len(old)


class FileReader:
    def __init__(
        self,
        boot: Bootstrap,
        source: ChunkSource,
        *,
        memo_bytes: int = 64 << 20,
        on_fetch: Callable[[float], None] | None = None,
    ) -> None:
        self.boot = boot
        self.source = source
        self.memo = ChunkMemo(memo_bytes)
        self.stats = ReadStats()
        self.on_fetch = on_fetch
        self._refs = [BlobRef.of(boot, i) for i in range(len(boot.blobs))]

    async def read(self, inode: Inode, offset: int, size: int) -> bytes:
        end = min(offset + size, inode.size)
        if offset >= end:
            return b""
        chunks = overlapping(inode, offset, end, self.boot.chunk_size)
        decoded = await self.chunks(chunks)
        self.stats.reads += 1
        out = assemble(chunks, decoded, offset, end)
        self.stats.bytes_read += len(out)
        return out

    async def chunks(self, chunks: list[ChunkInfo]) -> list[bytes]:
        """Decoded bytes of each chunk, from the memo or the source."""
        found: dict[tuple[int, int], bytes] = {}
        wanted: dict[int, dict[tuple[int, int], ChunkInfo]] = {}
        for chunk in chunks:
            data = self.memo.get(_key(chunk))
            if data is not None:
                found[_key(chunk)] = data
                self.stats.memo_hits += 1
            else:
                wanted.setdefault(chunk.blob_index, {})[_key(chunk)] = chunk
        batches = await asyncio.gather(
            *(self._fetch(blob, list(cs.values())) for blob, cs in wanted.items())
        )
        for batch in batches:
            found.update(batch)
        return [found[_key(c)] for c in chunks]

    async def _fetch(
        self, blob_index: int, chunks: list[ChunkInfo]
    ) -> dict[tuple[int, int], bytes]:
        start = time.monotonic()
        fetched = await self.source.get(self._refs[blob_index], chunks)
        if self.on_fetch is not None:
            self.on_fetch(time.monotonic() - start)
        self.stats.chunks_fetched += len(fetched)
        out = {}
        for item in fetched:
            self.memo.put(_key(item.info), item.data)
            out[_key(item.info)] = item.data
        return out


def _key(chunk: ChunkInfo) -> tuple[int, int]:
    return (chunk.blob_index, chunk.compressed_offset)


def overlapping(inode: Inode, start: int, end: int, chunk_size: int) -> list[ChunkInfo]:
    """Chunk records covering any byte of [start, end)."""
    if not inode.flags & INODE_HAS_HOLE:  # loaders checked: record n is at n * chunk_size
        first, last = start // chunk_size, (end - 1) // chunk_size
        return [c for c in inode.chunks[first : last + 1] if c.file_offset < end]
    return [
        c
        for c in inode.chunks
        if c.file_offset < end and c.file_offset + c.uncompressed_size > start
    ]


def assemble(chunks: list[ChunkInfo], decoded: list[bytes], start: int, end: int) -> bytes:
    out = bytearray(end - start)
    for chunk, data in zip(chunks, decoded, strict=True):
        lo = max(start, chunk.file_offset)
        hi = min(end, chunk.file_offset + len(data))
        if hi > lo:
            out[lo - start : hi - start] = data[lo - chunk.file_offset : hi - chunk.file_offset]
    return bytes(out)
