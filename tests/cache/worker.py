"""Subprocess side of the multi-process and crash tests.

    python -m tests.cache.worker MODE CACHE_DIR BLOB_ID COUNT START_AT [INDEX...]

Blobs are rebuilt from their id with `make_blob`, so parent and children agree on every
byte. Each mode waits until the wall clock reaches START_AT (so processes overlap), then:

- put:   store the given chunks, shuffled, one at a time and in small batches;
- read:  until every chunk is present, read and verify every present chunk; exit 3 on a
         chunk that is marked present but does not verify;
- churn: forever: discard a chunk, scribble over its bytes (as a torn earlier write would),
         store it again, sometimes a batch; printed "ready" first (the crash test kills it);
- evict: forever: evict every blob not in use;
- bits:  with INDEX = k of n, set bits k, k + n, k + 2n, ... below COUNT of the chunk map at
         CACHE_DIR/BLOB_ID.chunk_map one call at a time (a bitmap byte stress, no data).
"""

from __future__ import annotations

import os
import random
import sys
import time
from pathlib import Path

from rafs._cache import BlobCache
from rafs._chunkmap import ChunkMap
from rafs._chunksource import verify_chunk
from rafs._errors import ChunkDigestMismatch

from .blobs import Blob, make_blob

CHUNK_SIZES = {"min_size": 1024, "max_size": 65536}


def blob_named(blob_id: str, count: int) -> Blob:
    return make_blob(blob_id, count, **CHUNK_SIZES)


def put(cache: BlobCache, blob: Blob, indices: list[int], rng: random.Random) -> None:
    rng.shuffle(indices)
    while indices:
        batch = indices[: rng.choice((1, 1, 3))]
        indices = indices[len(batch) :]
        cache.put_many(blob.ref, [blob.fetched(i) for i in batch])


def read(cache: BlobCache, blob: Blob, deadline: float) -> int:
    while time.time() < deadline:
        seen = 0
        for info in blob.chunks:
            stored = cache.read_stored(blob.blob_id, info)
            if stored is None:
                continue
            try:
                verify_chunk(blob.ref, info, stored)
            except ChunkDigestMismatch as exc:
                print(f"present but bad: {exc}", file=sys.stderr)
                return 3
            seen += 1
        if seen == len(blob.chunks):
            return 0
    return 4


def churn(cache: BlobCache, blob: Blob, rng: random.Random) -> None:
    print("ready", flush=True)
    data_path = cache.data_path(blob.blob_id)
    while True:
        batch = rng.sample(range(len(blob.chunks)), rng.choice((1, 1, 4)))
        for index in batch:
            info = blob.chunks[index]
            cache.discard(blob.blob_id, info)
            if data_path.exists():
                with open(data_path, "r+b") as data:
                    os.pwrite(data.fileno(), os.urandom(info.compressed_size),
                              info.compressed_offset)  # fmt: skip
        cache.put_many(blob.ref, [blob.fetched(i) for i in batch])


def set_bits(path: Path, count: int, k: int, n: int) -> None:
    chunk_map = ChunkMap.open(path, writable=True)
    assert chunk_map is not None
    with chunk_map:
        for index in range(k, count, n):
            chunk_map.set_many([index])


def evict(cache: BlobCache) -> None:
    while True:
        cache.evict_until(0)


def main(argv: list[str]) -> int:
    mode, directory, blob_id, count, start_at, *rest = argv
    if mode == "bits":
        time.sleep(max(0.0, float(start_at) - time.time()))
        set_bits(Path(directory) / f"{blob_id}.chunk_map", int(count), int(rest[0]), int(rest[1]))
        return 0
    blob = blob_named(blob_id, int(count))
    rng = random.Random(os.getpid())
    with BlobCache(directory) as cache:
        time.sleep(max(0.0, float(start_at) - time.time()))
        if mode == "put":
            put(cache, blob, [int(i) for i in rest], rng)
        elif mode == "read":
            return read(cache, blob, time.time() + 30)
        elif mode == "churn":
            churn(cache, blob, rng)
        elif mode == "evict":
            evict(cache)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
