"""The origin as a `ChunkSource`: chunks read from a `BlobBackend`, neighbours together.

The rules it keeps: chunks that lie close together in a blob travel in one ranged read
(gaps up to `merge_gap` are read and thrown away, one read stays under `max_request`);
every chunk is verified with `verify_chunk` before it is returned, and a chunk that fails
raises `ChunkDigestMismatch` naming blob, chunk, expected and actual digest.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from ._chunksource import BlobBackend, BlobRef, FetchedChunk, verify_chunk
from ._errors import RafsError
from ._model import ChunkInfo

DEFAULT_MERGE_GAP = 128 << 10
DEFAULT_MAX_REQUEST = 8 << 20
DEFAULT_CONCURRENCY = 8

T = TypeVar("T")
_Span = tuple[int, int, bytes]  # (compressed_offset, compressed_size, digest)


@dataclass(frozen=True, slots=True)
class ReadGroup:
    """One ranged read covering `chunks` (sorted, distinct spans)."""

    offset: int
    length: int
    chunks: tuple[ChunkInfo, ...]


def plan_reads(chunks: Sequence[ChunkInfo], merge_gap: int, max_request: int) -> list[ReadGroup]:
    """Group chunks by adjacency: sorted by offset, merged while the gap and size allow."""
    spans: dict[_Span, ChunkInfo] = {}
    for chunk in chunks:
        spans.setdefault(_span(chunk), chunk)
    groups: list[ReadGroup] = []
    current: list[ChunkInfo] = []
    for span in sorted(spans):
        chunk = spans[span]
        if current and not _fits(current, chunk, merge_gap, max_request):
            groups.append(_group(current))
            current = []
        current.append(chunk)
    if current:
        groups.append(_group(current))
    return groups


def _span(chunk: ChunkInfo) -> _Span:
    return chunk.compressed_offset, chunk.compressed_size, chunk.digest


def _end(chunks: Sequence[ChunkInfo]) -> int:
    return max(c.compressed_offset + c.compressed_size for c in chunks)


def _fits(current: Sequence[ChunkInfo], chunk: ChunkInfo, gap: int, cap: int) -> bool:
    end = _end(current)
    new_end = max(end, chunk.compressed_offset + chunk.compressed_size)
    return chunk.compressed_offset - end <= gap and new_end - current[0].compressed_offset <= cap


def _group(chunks: Sequence[ChunkInfo]) -> ReadGroup:
    start = chunks[0].compressed_offset
    return ReadGroup(start, _end(chunks) - start, tuple(chunks))


class OriginSource:
    """Verified chunks straight from a backend (a registry, a directory, S3)."""

    def __init__(
        self,
        backend: BlobBackend,
        *,
        merge_gap: int = DEFAULT_MERGE_GAP,
        max_request: int = DEFAULT_MAX_REQUEST,
        concurrency: int = DEFAULT_CONCURRENCY,
    ) -> None:
        self.backend = backend
        self.merge_gap = merge_gap
        self.max_request = max_request
        self._slots = asyncio.Semaphore(concurrency)
        # counters for a daemon's metrics
        self.requests = 0  # ranged reads sent to the backend
        self.bytes_read = 0  # bytes those reads returned, gaps included
        self.chunks_verified = 0
        self.chunks_failed = 0

    async def get(self, blob: BlobRef, chunks: Sequence[ChunkInfo]) -> list[FetchedChunk]:
        groups = plan_reads(chunks, self.merge_gap, self.max_request)
        results = await _all_or_none([self._fetch(blob, g) for g in groups])
        found = {span: fetched for result in results for span, fetched in result.items()}
        return [_as_asked(found[_span(c)], c) for c in chunks]

    async def close(self) -> None:
        await self.backend.close()

    async def _fetch(self, blob: BlobRef, group: ReadGroup) -> dict[_Span, FetchedChunk]:
        async with self._slots:
            self.requests += 1
            data = await self.backend.read(blob.blob_id, group.offset, group.length)
        self.bytes_read += len(data)
        return await asyncio.to_thread(self._verify_group, blob, group, data)

    def _verify_group(
        self, blob: BlobRef, group: ReadGroup, data: bytes
    ) -> dict[_Span, FetchedChunk]:
        verified: dict[_Span, FetchedChunk] = {}
        for chunk in group.chunks:
            start = chunk.compressed_offset - group.offset
            try:
                fetched = verify_chunk(blob, chunk, data[start : start + chunk.compressed_size])
            except RafsError:
                self.chunks_failed += 1
                raise
            self.chunks_verified += 1
            verified[_span(chunk)] = fetched
        return verified


async def _all_or_none(jobs: list[Coroutine[Any, Any, T]]) -> list[T]:
    """Run the jobs concurrently; on the first failure cancel the rest and raise it."""
    tasks = [asyncio.ensure_future(job) for job in jobs]
    try:
        return await asyncio.gather(*tasks)
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


def _as_asked(fetched: FetchedChunk, asked: ChunkInfo) -> FetchedChunk:
    """The same bytes under the record that was asked for (file offsets may differ)."""
    if fetched.info is asked:
        return fetched
    return FetchedChunk(asked, fetched.stored, fetched.data)
