"""OriginSource: neighbouring chunks travel in one ranged read, far ones in their own,
every chunk is verified, and a corrupted blob raises ChunkDigestMismatch naming it."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

import pytest

from rafs import BlobMissing, ChunkDigestMismatch, ChunkInfo
from rafs._backends import LocalDirBackend, RegistryBackend
from rafs._chunksource import ChunkSource
from rafs._origin import OriginSource, plan_reads
from tests.fixtures.registry import RegistryServer

from .blobs import CHUNK, StoredBlob, corrupt, make_blob


class CountingBackend(LocalDirBackend):
    """A directory backend that records every read it serves, and how many overlap."""

    def __init__(self, directory: Path, pause: float = 0.0) -> None:
        super().__init__(directory)
        self.reads: list[tuple[int, int]] = []
        self.pause = pause
        self.active = self.peak = 0

    async def read(self, blob_id: str, offset: int, length: int) -> bytes:
        self.reads.append((offset, length))
        self.active += 1
        self.peak = max(self.peak, self.active)
        try:
            await asyncio.sleep(self.pause)
            return await super().read(blob_id, offset, length)
        finally:
            self.active -= 1


@pytest.fixture
def blob(tmp_path: Path) -> StoredBlob:
    return make_blob(tmp_path / "blobs", 12)


def _pick(blob: StoredBlob, *indices: int) -> list[ChunkInfo]:
    return [blob.chunks[i] for i in indices]


async def _get(source: ChunkSource, blob: StoredBlob, chunks: list[ChunkInfo]) -> None:
    fetched = await source.get(blob.ref, chunks)
    assert [f.info for f in fetched] == chunks
    assert [f.data for f in fetched] == [blob.data_of(c) for c in chunks]


def test_random_chunks_are_stored_raw_and_adjacent(blob: StoredBlob) -> None:
    """The premise of the request counts below: 64 KiB chunks back to back."""
    assert [c.compressed_offset for c in blob.chunks] == [i * CHUNK for i in range(12)]
    assert all(c.compressed_size == CHUNK for c in blob.chunks)


async def test_adjacent_chunks_travel_in_one_read(blob: StoredBlob) -> None:
    backend = CountingBackend(blob.path.parent)
    source = OriginSource(backend)
    await _get(source, blob, _pick(blob, 3, 1, 2, 4))  # asked out of order
    assert backend.reads == [(CHUNK, 4 * CHUNK)]
    assert (source.requests, source.bytes_read, source.chunks_verified) == (1, 4 * CHUNK, 4)


async def test_small_gaps_are_read_through(blob: StoredBlob) -> None:
    backend = CountingBackend(blob.path.parent)
    source = OriginSource(backend, merge_gap=128 << 10)
    await _get(source, blob, _pick(blob, 0, 2, 5))  # gaps of 64 KiB and 128 KiB
    assert backend.reads == [(0, 6 * CHUNK)]


async def test_far_apart_chunks_are_read_separately(blob: StoredBlob) -> None:
    backend = CountingBackend(blob.path.parent)
    source = OriginSource(backend, merge_gap=128 << 10)
    await _get(source, blob, _pick(blob, 11, 0, 4))  # gaps of 192 KiB and 384 KiB
    assert sorted(backend.reads) == [(0, CHUNK), (4 * CHUNK, CHUNK), (11 * CHUNK, CHUNK)]
    assert source.requests == 3 and source.bytes_read == 3 * CHUNK


async def test_one_read_stays_under_the_size_cap(blob: StoredBlob) -> None:
    backend = CountingBackend(blob.path.parent)
    source = OriginSource(backend, max_request=3 * CHUNK)
    await _get(source, blob, list(blob.chunks))
    assert sorted(backend.reads) == [(i * 3 * CHUNK, 3 * CHUNK) for i in range(4)]


async def test_repeated_chunks_are_fetched_once(blob: StoredBlob) -> None:
    backend = CountingBackend(blob.path.parent)
    source = OriginSource(backend)
    again = dataclasses.replace(blob.chunks[1], file_offset=999 * CHUNK)  # a second file
    asked = [blob.chunks[1], blob.chunks[2], again, blob.chunks[1]]
    fetched = await source.get(blob.ref, asked)
    assert [f.info for f in fetched] == asked  # each under the record asked for
    assert backend.reads == [(CHUNK, 2 * CHUNK)] and source.chunks_verified == 2


async def test_group_concurrency_is_bounded(blob: StoredBlob) -> None:
    backend = CountingBackend(blob.path.parent, pause=0.02)
    source = OriginSource(backend, merge_gap=0, max_request=CHUNK, concurrency=3)
    await _get(source, blob, list(blob.chunks))
    assert len(backend.reads) == 12 and backend.peak == 3


async def test_compressed_chunks_are_decoded(tmp_path: Path) -> None:
    blob = make_blob(tmp_path, 6, compressible=True)
    assert all(c.compressed and c.compressed_size < CHUNK for c in blob.chunks)
    backend = CountingBackend(tmp_path)
    source = OriginSource(backend)
    await _get(source, blob, list(blob.chunks))
    assert len(backend.reads) == 1


async def test_corrupted_chunk_names_blob_chunk_and_digests(blob: StoredBlob) -> None:
    corrupt(blob.path, 5 * CHUNK + 100)
    source = OriginSource(CountingBackend(blob.path.parent))
    await _get(source, blob, _pick(blob, 3, 4))  # neighbours are still fine
    with pytest.raises(ChunkDigestMismatch) as info:
        await source.get(blob.ref, _pick(blob, 4, 5, 6))
    error = info.value
    assert (error.blob_id, error.chunk_index) == (blob.blob_id, 5)
    assert error.expected == blob.chunks[5].digest
    assert error.actual == blob.ref.digester.hash(blob.path.read_bytes()[5 * CHUNK : 6 * CHUNK])
    assert error.expected.hex() in str(error) and error.actual.hex() in str(error)
    assert source.chunks_failed == 1


class FailingFirstBackend(CountingBackend):
    """Fails the read at offset 0 at once; every other read is slow."""

    completed = 0

    async def read(self, blob_id: str, offset: int, length: int) -> bytes:
        if offset == 0:
            raise BlobMissing(f"blob {blob_id} vanished")
        await asyncio.sleep(5)
        self.completed += 1
        return await super().read(blob_id, offset, length)


async def test_a_failed_group_cancels_the_others(blob: StoredBlob) -> None:
    backend = FailingFirstBackend(blob.path.parent)
    source = OriginSource(backend, merge_gap=0, max_request=CHUNK)
    started = asyncio.get_running_loop().time()
    with pytest.raises(BlobMissing, match="vanished"):
        await source.get(blob.ref, list(blob.chunks))
    assert asyncio.get_running_loop().time() - started < 1.0
    assert backend.completed == 0


async def test_empty_request_reads_nothing(blob: StoredBlob) -> None:
    backend = CountingBackend(blob.path.parent)
    assert await OriginSource(backend).get(blob.ref, []) == []
    assert backend.reads == []


def test_plan_merges_by_offset_not_by_request_order(blob: StoredBlob) -> None:
    groups = plan_reads(_pick(blob, 7, 6, 0), merge_gap=0, max_request=1 << 20)
    assert [(g.offset, g.length, [c.index for c in g.chunks]) for g in groups] == [
        (0, CHUNK, [0]),
        (6 * CHUNK, 2 * CHUNK, [6, 7]),
    ]


async def test_through_a_real_registry(registry: RegistryServer, blob: StoredBlob) -> None:
    client = registry.client()
    await client.push_blob("origin/app", blob.path)
    source = OriginSource(RegistryBackend(client, "origin/app", own_client=True))
    try:
        before = client.requests
        await _get(source, blob, _pick(blob, 0, 1, 2, 9))
        assert client.requests - before == 2  # one ranged GET per group
        corrupt(blob.path, 0)
        client2 = registry.client()
        await client2.push_blob("origin/bad", blob.path)  # a registry serving a bad blob
        bad = OriginSource(RegistryBackend(client2, "origin/bad", own_client=True))
        bad_ref = dataclasses.replace(blob.ref, blob_id=_sha256(blob.path))
        with pytest.raises(
            ChunkDigestMismatch, match=f"chunk 0 expected {blob.chunks[0].digest.hex()}"
        ):
            await bad.get(bad_ref, _pick(blob, 0))
        await bad.close()
    finally:
        await source.close()


def _sha256(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()
