"""The cache's chunk index sidecar: what the chunk server reads to serve chunks by index."""

from __future__ import annotations

import os
from pathlib import Path

from rafs._cache import BlobCache
from tests.cache.blobs import make_blob


def test_records_are_written_with_the_chunks_and_serve_only_present_chunks(
    tmp_path: Path,
) -> None:
    blob = make_blob("a" * 64, 6)
    with BlobCache(tmp_path) as cache:
        assert cache.chunk_records(blob.blob_id, 0, 6) == []
        cache.put_many(blob.ref, [blob.fetched(i) for i in (1, 2, 4)])
        records = cache.chunk_records(blob.blob_id, 0, 6)
        assert [r.index for r in records] == [1, 2, 4]
        for record in records:
            info = blob.chunks[record.index]
            assert (record.compressed_offset, record.compressed_size, record.digest) == (
                info.compressed_offset,
                info.compressed_size,
                info.digest,
            )
            assert record.compressor == 1  # zstd
        stored = cache.read_indexed(blob.blob_id, records)
        assert stored == [blob.stored[1], blob.stored[2], blob.stored[4]]


def test_a_discarded_chunk_keeps_its_record_but_is_not_served(tmp_path: Path) -> None:
    blob = make_blob("b" * 64, 3)
    with BlobCache(tmp_path) as cache:
        cache.put_many(blob.ref, [blob.fetched(i) for i in range(3)])
        records = cache.chunk_records(blob.blob_id, 0, 3)
        cache.discard(blob.blob_id, blob.chunks[1])
        assert cache.read_indexed(blob.blob_id, records) == [blob.stored[0], None, blob.stored[2]]


def test_a_record_that_changed_since_it_was_read_is_not_served(tmp_path: Path) -> None:
    blob = make_blob("c" * 64, 2)
    with BlobCache(tmp_path) as cache:
        cache.put_many(blob.ref, [blob.fetched(0), blob.fetched(1)])
        first = cache.chunk_records(blob.blob_id, 0, 1)[0]
        fd = os.open(cache.index_path(blob.blob_id), os.O_WRONLY)
        try:
            os.pwrite(fd, b"\xff", 0)  # the offset field of record 0 changes
        finally:
            os.close(fd)
        assert cache.read_indexed(blob.blob_id, [first]) == [None]


def test_eviction_removes_the_index_and_usage_counts_it(tmp_path: Path) -> None:
    blob = make_blob("d" * 64, 4)
    with BlobCache(tmp_path) as cache:
        cache.put_many(blob.ref, [blob.fetched(i) for i in range(4)])
        assert cache.index_path(blob.blob_id).exists()
        assert cache.evict_until(0) == [blob.blob_id]
        assert not cache.index_path(blob.blob_id).exists()
        assert cache.usage() == 0
