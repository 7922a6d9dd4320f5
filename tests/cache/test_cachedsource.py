"""CachedSource over a real BlobCache and a fake inner source of real zstd chunks."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from rafs._cache import BlobCache, CachedSource
from rafs._errors import ChunkDigestMismatch

from .blobs import Blob, FakeSource, flip_byte, make_blob

BLOB = make_blob("sha256-blob", 24)


@pytest.fixture
def cache(tmp_path: Path) -> Iterator[BlobCache]:
    with BlobCache(tmp_path) as blob_cache:
        yield blob_cache


def source_over(cache: BlobCache, *, validate: bool = False, delay: float = 0.0) -> CachedSource:
    return CachedSource(cache, FakeSource({BLOB.blob_id: BLOB}, delay=delay), validate=validate)


async def fill(cache: BlobCache) -> None:
    source = source_over(cache)
    await source.get(BLOB.ref, BLOB.chunks)
    await source.flush()


def inner(source: CachedSource) -> FakeSource:
    assert isinstance(source.inner, FakeSource)
    return source.inner


def corrupt_cached(cache: BlobCache, blob: Blob, index: int, at: int | None = None) -> None:
    """Flip one byte of a cached chunk straight in the data file (the bit stays set)."""
    info = blob.chunks[index]
    at = info.compressed_size // 2 if at is None else at
    fd = os.open(cache.data_path(blob.blob_id), os.O_RDWR)
    try:
        old = os.pread(fd, 1, info.compressed_offset + at)
        os.pwrite(fd, flip_byte(old, 0), info.compressed_offset + at)
    finally:
        os.close(fd)


async def test_misses_go_to_inner_in_one_call_then_hit(cache: BlobCache) -> None:
    source = source_over(cache)
    asked = [BLOB.chunks[i] for i in (5, 1, 7, 3)]
    first = await source.get(BLOB.ref, asked)
    assert [c.data for c in first] == [BLOB.data[i] for i in (5, 1, 7, 3)]
    assert inner(source).calls == [[5, 1, 7, 3]]
    assert (source.hits, source.misses, source.inner_fetches) == (0, 4, 1)
    assert source.bytes_from_inner == sum(len(BLOB.stored[i]) for i in (5, 1, 7, 3))
    await source.flush()
    again = await source.get(BLOB.ref, asked[::-1])
    assert [c.data for c in again] == [BLOB.data[i] for i in (3, 7, 1, 5)]
    assert (source.hits, source.misses, len(inner(source).calls)) == (4, 4, 1)


async def test_only_the_missing_chunks_are_fetched_in_the_order_asked(cache: BlobCache) -> None:
    cache.put_many(BLOB.ref, [BLOB.fetched(i) for i in (2, 4)])
    source = source_over(cache)
    got = await source.get(BLOB.ref, [BLOB.chunks[i] for i in (6, 4, 2, 9, 2)])
    assert [c.info.index for c in got] == [6, 4, 2, 9, 2]
    assert [c.data for c in got] == [BLOB.data[i] for i in (6, 4, 2, 9, 2)]
    assert inner(source).calls == [[6, 9]]
    assert (source.hits, source.misses) == (2, 2)


async def test_a_new_cache_over_the_same_directory_serves_without_inner(tmp_path: Path) -> None:
    with BlobCache(tmp_path) as first:
        await fill(first)
    with BlobCache(tmp_path) as second:
        source = source_over(second, validate=True)
        got = await source.get(BLOB.ref, BLOB.chunks)
        assert [c.data for c in got] == BLOB.data
        assert inner(source).calls == [] and source.hits == len(BLOB.chunks)


async def test_the_chunk_comes_back_under_the_record_asked_for(cache: BlobCache) -> None:
    """Two files sharing a chunk have two records differing in file_offset."""
    source = source_over(cache)
    twin = dataclasses.replace(BLOB.chunks[3], file_offset=1 << 20)
    got = await source.get(BLOB.ref, [BLOB.chunks[3], twin])
    assert [c.info for c in got] == [BLOB.chunks[3], twin]
    assert inner(source).calls == [[3]]  # one chunk: fetched once


async def test_validate_detects_a_corrupted_byte_and_repairs_it_from_inner(
    cache: BlobCache, caplog: pytest.LogCaptureFixture
) -> None:
    await fill(cache)
    corrupt_cached(cache, BLOB, 7)
    source = source_over(cache, validate=True)
    with caplog.at_level(logging.WARNING, logger="rafs._cache"):
        got = await source.get(BLOB.ref, BLOB.chunks)
    assert [c.data for c in got] == BLOB.data
    assert source.validation_failures == 1 and inner(source).calls == [[7]]
    await source.flush()
    assert cache.data_path(BLOB.blob_id).read_bytes() == BLOB.image()  # repaired in place
    line = next(r.getMessage() for r in caplog.records if "failed validation" in r.getMessage())
    assert f"blob {BLOB.blob_id} chunk 7 expected {BLOB.chunks[7].digest.hex()}" in line
    assert "actual " in line
    again = source_over(cache, validate=True)
    await again.get(BLOB.ref, BLOB.chunks)
    assert again.validation_failures == 0 and inner(again).calls == []


async def test_without_validate_a_decodable_corruption_is_not_noticed(cache: BlobCache) -> None:
    """By design of the option: cached bytes were verified when stored, not on each read.

    Chunk 4 is stored raw, so a flipped byte still "decodes"; with validate it is caught.
    """
    await fill(cache)
    assert not BLOB.chunks[4].compressed
    corrupt_cached(cache, BLOB, 4)
    source = source_over(cache)
    (got,) = await source.get(BLOB.ref, [BLOB.chunks[4]])
    assert got.data != BLOB.data[4] and source.validation_failures == 0
    checked = source_over(cache, validate=True)
    (fixed,) = await checked.get(BLOB.ref, [BLOB.chunks[4]])
    assert fixed.data == BLOB.data[4] and checked.validation_failures == 1


async def test_without_validate_a_copy_that_does_not_decode_is_still_refetched(
    cache: BlobCache,
) -> None:
    await fill(cache)
    assert BLOB.chunks[0].compressed
    corrupt_cached(cache, BLOB, 0, at=0)  # the zstd frame magic
    source = source_over(cache)
    (got,) = await source.get(BLOB.ref, [BLOB.chunks[0]])
    assert got.data == BLOB.data[0]
    assert source.validation_failures == 1 and inner(source).calls == [[0]]


async def test_a_bad_chunk_from_inner_raises_and_is_not_stored(cache: BlobCache) -> None:
    source = source_over(cache)
    inner(source).lies.add(2)
    with pytest.raises(ChunkDigestMismatch) as caught:
        await source.get(BLOB.ref, BLOB.chunks[:4])
    assert (caught.value.blob_id, caught.value.chunk_index) == (BLOB.blob_id, 2)
    assert cache.missing(BLOB.blob_id, BLOB.chunks[:4]) == BLOB.chunks[:4]
    inner(source).lies.clear()
    assert [c.data for c in await source.get(BLOB.ref, BLOB.chunks[:4])] == BLOB.data[:4]


async def test_bad_cache_and_bad_inner_fail_the_read(cache: BlobCache) -> None:
    """The EIO path: never a wrong byte, and the bad copy stays discarded."""
    await fill(cache)
    corrupt_cached(cache, BLOB, 9)
    source = source_over(cache, validate=True)
    inner(source).lies.add(9)
    with pytest.raises(ChunkDigestMismatch):
        await source.get(BLOB.ref, BLOB.chunks[8:11])
    assert not cache.has(BLOB.blob_id, 9) and cache.has(BLOB.blob_id, 8)


async def test_concurrent_requests_share_one_lookup_and_fetch(cache: BlobCache) -> None:
    source = source_over(cache, delay=0.05)
    sets = [BLOB.chunks[0:8], BLOB.chunks[4:12], BLOB.chunks[0:12], BLOB.chunks[10:2:-1]]
    results = await asyncio.gather(*(source.get(BLOB.ref, sets[i % 4]) for i in range(40)))
    for i, got in enumerate(results):
        assert [c.data for c in got] == [BLOB.data[c.index] for c in sets[i % 4]]
    fetched = Counter(index for call in inner(source).calls for index in call)
    assert fetched == Counter(range(12))  # every chunk fetched from inner exactly once
    assert source.hits + source.misses + source.joined == sum(
        len({c.index for c in sets[i % 4]}) for i in range(40)
    )


async def test_a_cancelled_reader_does_not_cancel_the_fetch_others_wait_for(
    cache: BlobCache,
) -> None:
    source = source_over(cache, delay=0.05)
    first = asyncio.create_task(source.get(BLOB.ref, BLOB.chunks[:3]))
    await asyncio.sleep(0.01)
    second = asyncio.create_task(source.get(BLOB.ref, BLOB.chunks[:3]))
    await asyncio.sleep(0.01)
    first.cancel()
    assert [c.data for c in await second] == BLOB.data[:3]
    with pytest.raises(asyncio.CancelledError):
        await first
    await source.flush()  # the flight stores after resolving its readers
    assert cache.missing(BLOB.blob_id, BLOB.chunks[:3]) == []
    assert len(inner(source).calls) == 1


async def test_a_failing_store_still_returns_the_chunks(
    cache: BlobCache, monkeypatch: pytest.MonkeyPatch
) -> None:
    def disk_full(*_: object) -> int:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(cache, "put_many", disk_full)
    source = source_over(cache)
    assert [c.data for c in await source.get(BLOB.ref, BLOB.chunks[:2])] == BLOB.data[:2]
    await source.flush()
    assert source.store_failures == 1


async def test_close_stops_flights_and_closes_inner(cache: BlobCache) -> None:
    source = source_over(cache, delay=5)
    reader = asyncio.create_task(source.get(BLOB.ref, BLOB.chunks[:1]))
    await asyncio.sleep(0.01)
    await source.close()
    assert inner(source).closed
    with pytest.raises(asyncio.CancelledError):
        await reader


async def test_a_corrupt_chunk_map_falls_back_to_inner(cache: BlobCache) -> None:
    await fill(cache)
    cache.map_path(BLOB.blob_id).write_bytes(b"not a chunk map at all, no")
    source = source_over(cache, validate=True)
    assert [c.data for c in await source.get(BLOB.ref, BLOB.chunks[:3])] == BLOB.data[:3]
    await source.flush()
    assert inner(source).calls == [[0, 1, 2]] and source.store_failures == 1
