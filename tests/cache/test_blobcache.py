"""BlobCache on its own: layout, presence, persistence, discard, size checks, eviction."""

from __future__ import annotations

import itertools
import os
from pathlib import Path

import pytest

from rafs._cache import BlobCache, ChunkSizeMismatch, InvalidBlobId
from rafs._chunkmap import CorruptChunkMap, decode_indices
from rafs._chunksource import FetchedChunk

from .blobs import make_blob


def clock_from(start: int = 1) -> itertools.count[int]:
    return itertools.count(start)


def test_put_has_missing_read(tmp_path: Path) -> None:
    blob = make_blob("a", 10)
    with BlobCache(tmp_path) as cache:
        assert cache.put(blob.ref, blob.fetched(3))
        assert not cache.put(blob.ref, blob.fetched(3))  # present already
        assert cache.has("a", 3) and not cache.has("a", 2) and not cache.has("b", 3)
        assert cache.missing("a", blob.chunks[2:5]) == [blob.chunks[2], blob.chunks[4]]
        assert cache.read_stored("a", blob.chunks[3]) == blob.stored[3]
        assert cache.read_stored("a", blob.chunks[4]) is None
        assert cache.read_stored("nothing", blob.chunks[4]) is None


def test_data_file_has_the_blob_layout(tmp_path: Path) -> None:
    blob = make_blob("a", 12)
    with BlobCache(tmp_path) as cache:
        assert cache.put_many(blob.ref, [blob.fetched(i) for i in range(1, 12, 2)]) == 6
        data = cache.data_path("a").read_bytes()
        for info, stored in zip(blob.chunks, blob.stored, strict=True):
            expected = stored if info.index % 2 else bytes(len(stored))  # absent: a hole
            at = info.compressed_offset
            assert data[at : at + len(stored)] == expected
        cache.put_many(blob.ref, [blob.fetched(i) for i in range(0, 12, 2)])
        assert cache.data_path("a").read_bytes() == blob.image()


def test_chunks_survive_a_new_cache_instance(tmp_path: Path) -> None:
    blob = make_blob("a", 20)
    with BlobCache(tmp_path) as cache:
        cache.put_many(blob.ref, [blob.fetched(i) for i in (0, 5, 9, 19)])
    with BlobCache(tmp_path) as again:
        assert decode_indices(again.present_indices("a")) == [0, 5, 9, 19]
        assert [again.read_stored("a", blob.chunks[i]) for i in (0, 19)] == [
            blob.stored[0],
            blob.stored[19],
        ]


def test_discard_is_durable_and_allows_a_new_put(tmp_path: Path) -> None:
    blob = make_blob("a", 4)
    with BlobCache(tmp_path) as cache:
        cache.put(blob.ref, blob.fetched(2))
        cache.discard("a", blob.chunks[2])
        cache.discard("a", blob.chunks[3])  # absent: nothing to do
        cache.discard("nothing", blob.chunks[3])
    with BlobCache(tmp_path) as again:
        assert not again.has("a", 2)
        assert again.put(blob.ref, blob.fetched(2))


def test_present_indices_of_unknown_blob_is_empty(tmp_path: Path) -> None:
    with BlobCache(tmp_path) as cache:
        assert cache.present_indices("nothing") == b""


def test_wrong_sized_chunk_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    blob = make_blob("a", 3)
    good = blob.fetched(1)
    short = FetchedChunk(good.info, good.stored[:-1], good.data)
    with BlobCache(tmp_path) as cache:
        with pytest.raises(ChunkSizeMismatch) as caught:
            cache.put_many(blob.ref, [blob.fetched(0), short])
        assert (caught.value.chunk_index, caught.value.expected) == (1, len(good.stored))
        assert "blob a chunk 1" in str(caught.value)
        assert not cache.has("a", 0)


@pytest.mark.parametrize("blob_id", ["", "../up", "a/b", ".lock", "x" * 201, "a\0b"])
def test_blob_ids_that_cannot_name_a_file_are_refused(tmp_path: Path, blob_id: str) -> None:
    with BlobCache(tmp_path) as cache, pytest.raises(InvalidBlobId):
        cache.has(blob_id, 0)


def test_usage_counts_allocated_bytes_of_sparse_files(tmp_path: Path) -> None:
    blob = make_blob("a", 64, min_size=32768, max_size=32768)
    with BlobCache(tmp_path) as cache:
        assert cache.usage() == 0
        cache.put(blob.ref, blob.fetched(63))
        last = blob.chunks[63]
        assert cache.data_path("a").stat().st_size == last.compressed_offset + last.compressed_size
        assert cache.usage() < last.compressed_offset // 4


def _fill(cache: BlobCache, blob_id: str) -> None:
    blob = make_blob(blob_id, 8, min_size=8192, max_size=8192)
    cache.put_many(blob.ref, [blob.fetched(i) for i in range(8)])


def test_eviction_removes_least_recently_used_whole_blobs(tmp_path: Path) -> None:
    with BlobCache(tmp_path, clock=clock_from().__next__) as cache:
        for blob_id in ("a", "b", "c", "d"):
            _fill(cache, blob_id)
        cache.read_stored("a", make_blob("a", 8, min_size=8192, max_size=8192).chunks[0])
        assert [b.blob_id for b in cache.blobs()] == ["b", "c", "d", "a"]
        sizes = {b.blob_id: b.size for b in cache.blobs()}
        assert cache.evict_until(cache.usage() - sizes["b"] - 1) == ["b", "c"]
        assert not cache.data_path("b").exists() and not cache.map_path("b").exists()
        assert {b.blob_id for b in cache.blobs()} == {"d", "a"}
        assert cache.evict_until(10**12) == []


def test_size_limit_evicts_after_puts_but_never_the_blob_being_written(tmp_path: Path) -> None:
    with BlobCache(tmp_path, clock=clock_from().__next__) as probe:
        _fill(probe, "probe")
        one_blob = probe.usage()
    with BlobCache(tmp_path / "c", size_limit=2 * one_blob, clock=clock_from().__next__) as cache:
        for blob_id in ("a", "b", "c"):
            _fill(cache, blob_id)
        assert [b.blob_id for b in cache.blobs()] == ["b", "c"]
        assert cache.usage() <= 2 * one_blob
    with BlobCache(tmp_path / "d", size_limit=1, clock=clock_from().__next__) as tiny:
        _fill(tiny, "a")
        _fill(tiny, "b")
        assert [b.blob_id for b in tiny.blobs()] == ["b"]  # over the limit, but in use


def test_eviction_skips_a_blob_another_instance_is_using(tmp_path: Path) -> None:
    with BlobCache(tmp_path, clock=clock_from().__next__) as cache, BlobCache(tmp_path) as other:
        for blob_id in ("a", "b"):
            _fill(cache, blob_id)
        with other._pins.held("a"):  # another reader, mid-read (its own open file)
            assert cache.evict_until(0) == ["b"]
        assert cache.evict_until(0) == ["a"]
        assert cache.usage() == 0


def test_a_data_file_left_without_map_is_evicted_first_and_never_trusted(tmp_path: Path) -> None:
    blob = make_blob("a", 4)
    with BlobCache(tmp_path, clock=clock_from(100).__next__) as cache:
        _fill(cache, "recent")
        cache.put_many(blob.ref, [blob.fetched(i) for i in range(4)])
        cache.map_path("a").unlink()  # as if eviction died between its two unlinks
        assert not cache.has("a", 1) and cache.read_stored("a", blob.chunks[1]) is None
        assert cache.blobs()[0].blob_id == "a" and cache.blobs()[0].last_access == 0
        assert cache.put(blob.ref, blob.fetched(1))  # a fresh map: old bytes are not present
        assert decode_indices(cache.present_indices("a")) == [1]


def test_corrupt_map_raises_with_its_path_and_is_evictable(tmp_path: Path) -> None:
    blob = make_blob("a", 4)
    with BlobCache(tmp_path) as cache:
        cache.put(blob.ref, blob.fetched(0))
        cache.map_path("a").write_bytes(b"garbage" * 8)
        with pytest.raises(CorruptChunkMap, match=r"a\.chunk_map: magic"):
            cache.read_stored("a", blob.chunks[0])
        assert cache.blobs()[0].last_access == 0
        assert cache.evict_until(0) == ["a"]


def test_map_without_data_file_is_absent_and_refuses_writes(tmp_path: Path) -> None:
    blob = make_blob("a", 4)
    with BlobCache(tmp_path) as cache:
        cache.put(blob.ref, blob.fetched(0))
        os.unlink(cache.data_path("a"))  # removed behind the cache's back
        assert cache.read_stored("a", blob.chunks[0]) is None
        with pytest.raises(CorruptChunkMap, match=r"a\.blob\.data missing"):
            cache.put(blob.ref, blob.fetched(1))
