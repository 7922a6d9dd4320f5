"""The verified local chunk cache, shared by every daemon on the host and kept across
restarts, and `CachedSource`, the `ChunkSource` that reads through it.

The rule: a chunk is marked present only after its digest was checked and its bytes are
durable. Only a `FetchedChunk` (made by `verify_chunk`) can be stored; its bytes and its
index record are written and `fdatasync`ed, and only then is its bit set in the chunk map
and the map synced, all while an exclusive lock is held on the chunk's byte range of the
data file. Readers hold a shared lock on that range while they test the bit and read the
bytes, so no reader sees a chunk half written, and a crash at any moment leaves the bit
clear or the bytes right.

Files in `cache_dir`:

    <blob_id>.blob.data   sparse; each chunk's stored bytes at its compressed_offset, the
                          blob's own layout, so a peer can serve ranges straight from it
    <blob_id>.chunk_map   header + one bit per chunk index (layout in `_chunkmap`)
    <blob_id>.chunk_index sparse; per chunk index its offset, sizes, flags, compressor and
                          digest (`_chunkmap.RECORD`), so a peer serves chunks by index
    .lock                 never removed. Every cache instance holds a shared lock on one
                          byte of it per blob (at a hash of the blob id) while it operates
                          on that blob; eviction takes that byte exclusively, without
                          waiting, so a blob in use by any process is never removed.

A map exists only while its data file's directory entry is durable: creating writes the
data and index files, syncs the directory, then links the map in; evicting unlinks the map,
syncs the directory, then unlinks the others. So a map's bits never point into new, empty files.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Coroutine, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from ._chunkmap import (
    RECORD,
    CacheError,
    ChunkMap,
    ChunkRecord,
    CorruptChunkMap,
    create_map,
    decode_records,
    fsync_dir,
    lock_range,
    locked,
    unlock_range,
)
from ._chunksource import BlobRef, ChunkSource, FetchedChunk, verify_chunk
from ._digest import ChunkDecodeError, Compressor
from ._errors import ChunkDigestMismatch, CorruptBootstrap
from ._model import ChunkInfo

log = logging.getLogger(__name__)

DATA_SUFFIX = ".blob.data"
MAP_SUFFIX = ".chunk_map"
INDEX_SUFFIX = ".chunk_index"
COMPRESSOR_CODES = {Compressor.NONE: 0, Compressor.ZSTD: 1, Compressor.LZ4_BLOCK: 2,
                    Compressor.GZIP: 3}  # fmt: skip
LOCK_NAME = ".lock"
_BLOB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,199}")


class InvalidBlobId(CacheError):
    """A blob id that cannot name a cache file (empty, a path, a leading dot, too long)."""

    def __init__(self, blob_id: str) -> None:
        super().__init__(f"blob id {blob_id!r} cannot name a cache file")
        self.blob_id = blob_id


class ChunkSizeMismatch(CacheError):
    """A chunk handed to the cache is not the size its record says."""

    def __init__(self, blob_id: str, chunk_index: int, expected: int, actual: int) -> None:
        super().__init__(
            f"chunk size mismatch: blob {blob_id} chunk {chunk_index} "
            f"expected {expected} bytes, got {actual}"
        )
        self.blob_id = blob_id
        self.chunk_index = chunk_index
        self.expected = expected
        self.actual = actual


@dataclass(frozen=True, slots=True)
class CachedBlob:
    """One blob in the cache directory, as eviction sees it."""

    blob_id: str
    size: int  # bytes its files occupy on disk
    last_access: int  # ns since the epoch; 0 when unknown (no map, or a corrupt one)


class BlobCache:
    """Chunks of many blobs in one directory; safe to share between threads and processes."""

    def __init__(
        self,
        cache_dir: str | os.PathLike[str],
        *,
        size_limit: int | None = None,
        clock: Callable[[], int] = time.time_ns,
    ) -> None:
        self.cache_dir = Path(cache_dir)
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        self.size_limit = size_limit
        self._clock = clock
        self._pins = _Pins(self.cache_dir / LOCK_NAME)

    def close(self) -> None:
        self._pins.close()

    def __enter__(self) -> BlobCache:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def data_path(self, blob_id: str) -> Path:
        return self.cache_dir / (_checked_id(blob_id) + DATA_SUFFIX)

    def map_path(self, blob_id: str) -> Path:
        return self.cache_dir / (_checked_id(blob_id) + MAP_SUFFIX)

    def index_path(self, blob_id: str) -> Path:
        return self.cache_dir / (_checked_id(blob_id) + INDEX_SUFFIX)

    # --- reading ---------------------------------------------------------------------------

    def has(self, blob_id: str, index: int) -> bool:
        return index in self._present(blob_id, [index])

    def missing(self, blob_id: str, chunks: Sequence[ChunkInfo]) -> list[ChunkInfo]:
        """The chunks not present, in the order given."""
        present = self._present(blob_id, [c.index for c in chunks])
        return [c for c in chunks if c.index not in present]

    def present_indices(self, blob_id: str) -> bytes:
        """The bitmap: bit i (bit i % 8 of byte i // 8) set when chunk i is present."""
        chunk_map = ChunkMap.open(self.map_path(blob_id), writable=False)
        if chunk_map is None:
            return b""
        with chunk_map:
            return chunk_map.bitmap()

    def read_stored(self, blob_id: str, info: ChunkInfo) -> bytes | None:
        """The chunk's bytes as stored (compressed), or None when it is not present."""
        return self.read_many(blob_id, [info])[0]

    def read_many(self, blob_id: str, infos: Sequence[ChunkInfo]) -> list[bytes | None]:
        with self._pins.held(blob_id):
            files = self._open_files(blob_id, write=False)
            if files is None:
                return [None] * len(infos)
            with files:
                stored = [files.read(info) for info in infos]
                if any(s is not None for s in stored):
                    files.chunk_map.touch(self._clock())
                return stored

    def chunk_records(self, blob_id: str, start: int, end: int) -> list[ChunkRecord]:
        """The index records written for chunks `[start, end)` (present or not: check with
        `read_indexed`, which serves only chunks whose bit is set)."""
        try:
            fd = os.open(self.index_path(blob_id), os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return []
        try:
            raw = _pread_all(fd, (end - start) * RECORD.size, start * RECORD.size)
        finally:
            os.close(fd)
        return decode_records(raw, start)

    def read_indexed(self, blob_id: str, records: Sequence[ChunkRecord]) -> list[bytes | None]:
        """Per record, the chunk's stored bytes if its bit is set and its record unchanged."""
        with self._pins.held(blob_id):
            files = self._open_files(blob_id, write=False)
            if files is None:
                return [None] * len(records)
            with files:
                return [files.read_by_record(record) for record in records]

    def lease_indexed(self, blob_id: str, records: Sequence[ChunkRecord]) -> ChunkLease:
        """Hold the chunks `read_indexed` would serve, for sending straight from the file.

        The lease names the records whose bits are set and whose records read the same, and
        keeps a shared lock on every record's span (and the blob pinned) until `close`: no
        writer in any process can clear those bits or overwrite those bytes meanwhile.
        Blocks while a writer holds a span; `close` may be called from any thread.
        """
        stack = ExitStack()
        try:
            stack.enter_context(self._pins.held(blob_id))
            files = self._open_files(blob_id, write=False)
            if files is None:
                stack.close()
                return ChunkLease(-1, [], stack)
            stack.enter_context(files)
            return ChunkLease(files.data_fd, files.hold_verified(records, stack), stack)
        except BaseException:
            stack.close()
            raise

    def _present(self, blob_id: str, indices: Sequence[int]) -> set[int]:
        chunk_map = ChunkMap.open(self.map_path(blob_id), writable=False)
        if chunk_map is None:
            return set()
        with chunk_map:
            return {i for i in indices if chunk_map.has(i)}

    # --- writing ---------------------------------------------------------------------------

    def put(self, blob: BlobRef, fetched: FetchedChunk) -> bool:
        """Store one verified chunk; False when it was present already."""
        return self.put_many(blob, [fetched]) == 1

    def put_many(self, blob: BlobRef, fetched: Sequence[FetchedChunk]) -> int:
        """Store verified chunks with one sync of data and one of the map; the number new."""
        chunks = _sized(blob.blob_id, fetched)
        if not chunks or not self.missing(blob.blob_id, [c.info for c in chunks]):
            return 0  # all present (a peer stores what it fetches, then the reader again)
        with self._pins.held(blob.blob_id):
            with self._files_for_writing(blob.blob_id) as files:
                stored = files.store(chunks, COMPRESSOR_CODES[blob.compressor])
                files.chunk_map.touch(self._clock())
            if stored and self.size_limit is not None:
                self.evict_until(self.size_limit)  # this blob is pinned: never evicted here
        return stored

    def discard(self, blob_id: str, info: ChunkInfo) -> None:
        """Mark the chunk absent (durably), e.g. after its cached bytes failed validation.

        Takes the ChunkInfo, not just the index: the clear happens under the lock on the
        chunk's byte range, so no writer can overwrite the bytes before the clear is synced.
        """
        with self._pins.held(blob_id):
            files = self._open_files(blob_id, write=True)
            if files is None:
                return
            with files:
                files.discard(info)

    def _open_files(self, blob_id: str, *, write: bool) -> _BlobFiles | None:
        paths = self.data_path(blob_id), self.map_path(blob_id), self.index_path(blob_id)
        return _BlobFiles.open(*paths, write=write)

    def _files_for_writing(self, blob_id: str) -> _BlobFiles:
        """The blob's files, created if needed: data and index durable first, then the map."""
        data_path, map_path = self.data_path(blob_id), self.map_path(blob_id)
        if not map_path.exists():
            for path in (data_path, self.index_path(blob_id)):
                os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644))
            fsync_dir(self.cache_dir)
            create_map(map_path)
        files = self._open_files(blob_id, write=True)
        if files is None:  # removed behind our back: never set bits over a new, empty file
            raise CorruptChunkMap(map_path, "data file", f"{data_path.name} missing")
        return files

    # --- size and eviction -----------------------------------------------------------------

    def blobs(self) -> list[CachedBlob]:
        """Every blob with a file in the cache directory, least recently used first."""
        sizes: dict[str, int] = {}
        for entry in os.scandir(self.cache_dir):
            blob_id = _blob_id_of(entry.name)
            size = _allocated(entry)
            if blob_id is not None and size is not None:
                sizes[blob_id] = sizes.get(blob_id, 0) + size
        found = [CachedBlob(b, size, self._last_access(b)) for b, size in sizes.items()]
        return sorted(found, key=lambda b: (b.last_access, b.blob_id))

    def usage(self) -> int:
        """Bytes the blobs' files occupy on disk (allocated blocks: data files are sparse)."""
        return sum(b.size for b in self.blobs())

    def evict_until(self, limit: int) -> list[str]:
        """Remove least recently used whole blobs until usage <= limit; the ids removed.

        A blob that any cache instance (this one included) is reading or writing right now
        is skipped, so usage can stay above the limit while everything left is in use.
        """
        blobs = self.blobs()
        total = sum(b.size for b in blobs)
        evicted: list[str] = []
        for blob in blobs:
            if total <= limit:
                break
            if self._pins.remove_unused(blob.blob_id, partial(self._remove, blob.blob_id)):
                total -= blob.size
                evicted.append(blob.blob_id)
        if evicted:
            log.info("cache evicted %d blobs, usage now %d (limit %d)", len(evicted), total, limit)
        return evicted

    def _remove(self, blob_id: str) -> None:
        self.map_path(blob_id).unlink(missing_ok=True)
        fsync_dir(self.cache_dir)
        self.data_path(blob_id).unlink(missing_ok=True)
        self.index_path(blob_id).unlink(missing_ok=True)
        log.info("cache evicted blob %s", blob_id)

    def _last_access(self, blob_id: str) -> int:
        try:
            chunk_map = ChunkMap.open(self.map_path(blob_id), writable=False)
        except CorruptChunkMap:
            return 0
        if chunk_map is None:
            return 0
        with chunk_map:
            return chunk_map.last_access()


class _BlobFiles:
    """The data file and chunk map of one blob, opened for one operation."""

    def __init__(self, data_fd: int, chunk_map: ChunkMap, index_path: Path) -> None:
        self.data_fd = data_fd
        self.chunk_map = chunk_map
        self.index_path = index_path

    @classmethod
    def open(
        cls, data_path: Path, map_path: Path, index_path: Path, *, write: bool
    ) -> _BlobFiles | None:
        """None when the blob has no map or no data file: nothing of it is present."""
        chunk_map = ChunkMap.open(map_path, writable=True)
        if chunk_map is None:
            return None
        try:
            mode = os.O_RDWR if write else os.O_RDONLY  # exclusive locks need O_RDWR
            data_fd = os.open(data_path, mode | os.O_CLOEXEC)
        except FileNotFoundError:
            chunk_map.close()
            return None
        return cls(data_fd, chunk_map, index_path)

    def __enter__(self) -> _BlobFiles:
        return self

    def __exit__(self, *_: object) -> None:
        os.close(self.data_fd)
        self.chunk_map.close()

    def read(self, info: ChunkInfo) -> bytes | None:
        start, length = _span(info)
        with locked(self.data_fd, start, length, exclusive=False):
            if not self.chunk_map.has(info.index):
                return None
            return _pread_all(self.data_fd, info.compressed_size, info.compressed_offset)

    def read_by_record(self, record: ChunkRecord) -> bytes | None:
        """The stored bytes, if the bit is set and the record still reads the same under
        the span's lock (a record read before its writer finished is not trusted)."""
        start, length = record.compressed_offset, max(1, record.compressed_size)
        with locked(self.data_fd, start, length, exclusive=False):
            if not self.chunk_map.has(record.index) or self._record(record.index) != record:
                return None
            return _pread_all(self.data_fd, record.compressed_size, record.compressed_offset)

    def hold_verified(self, records: Sequence[ChunkRecord], stack: ExitStack) -> list[ChunkRecord]:
        """The records `read_by_record` would serve; every span's shared lock is left on
        `stack` (taken in ascending order, like every holder of several range locks)."""
        verified: set[int] = set()
        for record in sorted(records, key=lambda r: r.compressed_offset):
            start, length = record.compressed_offset, max(1, record.compressed_size)
            lock_range(self.data_fd, start, length, exclusive=False)
            stack.callback(unlock_range, self.data_fd, start, length)
            if self.chunk_map.has(record.index) and self._record(record.index) == record:
                verified.add(record.index)
        return [record for record in records if record.index in verified]

    def _record(self, index: int) -> ChunkRecord | None:
        try:
            fd = os.open(self.index_path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        try:
            found = decode_records(os.pread(fd, RECORD.size, index * RECORD.size), index)
        finally:
            os.close(fd)
        return found[0] if found else None

    def store(self, chunks: Sequence[FetchedChunk], compressor: int) -> int:
        """Write the chunks not present yet and their index records, sync, then set their
        bits; the number written."""
        with self._locked_spans([c.info for c in chunks]):
            new = [c for c in chunks if not self.chunk_map.has(c.info.index)]
            for chunk in new:
                _pwrite_all(self.data_fd, chunk.stored, chunk.info.compressed_offset)
            if new:
                self._write_records(new, compressor)
                os.fdatasync(self.data_fd)
                self.chunk_map.set_many(c.info.index for c in new)
            return len(new)

    def _write_records(self, chunks: Sequence[FetchedChunk], compressor: int) -> None:
        fd = os.open(self.index_path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            for chunk in chunks:
                _pwrite_all(fd, _record_of(chunk.info, compressor).encode(),
                            chunk.info.index * RECORD.size)  # fmt: skip
            os.fdatasync(fd)
        finally:
            os.close(fd)

    def discard(self, info: ChunkInfo) -> None:
        start, length = _span(info)
        with locked(self.data_fd, start, length, exclusive=True):
            self.chunk_map.clear_many([info.index])

    @contextmanager
    def _locked_spans(self, infos: Sequence[ChunkInfo]) -> Iterator[None]:
        """Exclusive locks on the chunks' ranges, merged, taken in ascending order.

        Every holder of several range locks takes them in ascending order, and map locks are
        only taken inside range locks, so processes sharing the files cannot deadlock.
        """
        with ExitStack() as stack:
            for start, end in _merged_spans(infos):
                stack.enter_context(locked(self.data_fd, start, end - start, exclusive=True))
            yield


class ChunkLease:
    """Chunks of one blob held verified (`BlobCache.lease_indexed`): `records` may be sent
    from `data_fd` at their offsets until `close`, which drops the locks and the files."""

    def __init__(self, data_fd: int, records: list[ChunkRecord], stack: ExitStack) -> None:
        self.data_fd = data_fd
        self.records = records
        self._stack = stack

    def close(self) -> None:
        self._stack.close()

    def __enter__(self) -> ChunkLease:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


class _Pins:
    """Which blobs this cache instance is using, as shared locks other processes can see.

    One descriptor of the `.lock` file per instance holds a shared one-byte lock per blob
    in use (counted, so nested and concurrent users share it). Eviction succeeds only if it
    can take that byte exclusively at once, and holds it while removing the files, so users
    and eviction never overlap. Slots are hashes of blob ids: a collision only makes
    eviction skip a blob it could have removed.
    """

    def __init__(self, path: Path) -> None:
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        self._mutex = threading.Lock()
        self._users: dict[int, int] = {}  # slot -> operations in flight

    def close(self) -> None:
        os.close(self._fd)

    @contextmanager
    def held(self, blob_id: str) -> Iterator[None]:
        slot = _slot(blob_id)
        with self._mutex:
            if slot not in self._users:
                lock_range(self._fd, slot, 1, exclusive=False)  # waits out an eviction
            self._users[slot] = self._users.get(slot, 0) + 1
        try:
            yield
        finally:
            self._release(slot)

    def _release(self, slot: int) -> None:
        with self._mutex:
            self._users[slot] -= 1
            if not self._users[slot]:
                del self._users[slot]
                unlock_range(self._fd, slot, 1)

    def remove_unused(self, blob_id: str, remove: Callable[[], None]) -> bool:
        """Run `remove` if no cache instance anywhere is using the blob; whether it ran."""
        slot = _slot(blob_id)
        with self._mutex:  # our own users wait, and our own descriptor holds no shared lock
            if slot in self._users:
                return False
            if not lock_range(self._fd, slot, 1, exclusive=True, wait=False):
                return False
            try:
                remove()
            finally:
                unlock_range(self._fd, slot, 1)
        return True


class CachedSource:
    """A `ChunkSource` serving chunks from a `BlobCache` and fetching the rest from `inner`.

    Chunks present in the cache are read from it (with `validate`, each is verified on every
    read; a bad copy is discarded, logged and fetched again). The rest go to `inner` in one
    call per request so it can merge ranges; what it returns (verified by it) is stored.
    Within one process concurrent requests for one chunk share one cache read and one
    fetch. Readers get fetched chunks before they are stored; `flush` waits for the stores.
    Without `validate`, a cached chunk is decoded but not hashed on read: its bytes were
    verified when stored, and a copy that no longer decodes is still caught.

    Counters: `hits` and `misses` count cache lookups per chunk, `joined` chunks that waited
    for a lookup or fetch already running; `inner_fetches` and `bytes_from_inner` what went
    to `inner`; `validation_failures` cached copies found bad; `store_failures` batches the
    cache could not store (the chunks were still returned).
    """

    def __init__(self, cache: BlobCache, inner: ChunkSource, *, validate: bool = False) -> None:
        self.cache = cache
        self.inner = inner
        self.validate = validate
        self.hits = 0
        self.misses = 0
        self.joined = 0
        self.inner_fetches = 0
        self.bytes_from_inner = 0
        self.validation_failures = 0
        self.store_failures = 0
        self._flights: dict[_Key, asyncio.Future[FetchedChunk]] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    async def get(self, blob: BlobRef, chunks: Sequence[ChunkInfo]) -> list[FetchedChunk]:
        """The chunks, in the order asked, each verified when it entered the cache."""
        futures = self._flights_for(blob, chunks)
        found = {key: await asyncio.shield(future) for key, future in futures.items()}
        return [_as_asked(found[_key(blob, c)], c) for c in chunks]

    async def flush(self) -> None:
        """Wait until every chunk fetched so far was stored (or its store failed)."""
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def close(self) -> None:
        """Stop flights still running and close `inner`; the cache is the caller's to close."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.inner.close()

    # --- flights: one lookup-then-fetch per chunk at a time --------------------------------

    def _flights_for(self, blob: BlobRef, chunks: Sequence[ChunkInfo]) -> dict[_Key, _Future]:
        futures: dict[_Key, _Future] = {}
        owned: list[ChunkInfo] = []
        loop = asyncio.get_running_loop()
        for info in chunks:
            key = _key(blob, info)
            if key in futures:
                continue
            if key in self._flights:
                self.joined += 1
            else:
                self._flights[key] = loop.create_future()
                owned.append(info)
            futures[key] = self._flights[key]
        if owned:
            self._spawn(self._fly(blob, owned))
        return futures

    def _spawn(self, flight: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(flight)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _fly(self, blob: BlobRef, owned: list[ChunkInfo]) -> None:
        """Look the chunks up, fetch the misses, resolve every flight, then store."""
        futures = [self._flights[_key(blob, info)] for info in owned]
        try:
            found = await self._lookup(blob, owned)
            for future, chunk in zip(futures, found, strict=True):
                if chunk is not None:
                    future.set_result(chunk)
            absent = [info for info, chunk in zip(owned, found, strict=True) if chunk is None]
            if absent:
                await self._fetch(blob, absent, [f for f in futures if not f.done()])
        except BaseException as exc:
            if not _fail(futures, exc) and isinstance(exc, Exception):  # nobody else will see it
                log.error("chunk flight for blob %s failed after its readers were served",
                          blob.blob_id, exc_info=exc)  # fmt: skip
            if not isinstance(exc, Exception):
                raise
        finally:
            for info in owned:
                del self._flights[_key(blob, info)]

    async def _fetch(self, blob: BlobRef, absent: list[ChunkInfo], futures: list[_Future]) -> None:
        fetched = await self.inner.get(blob, absent)
        self.inner_fetches += 1
        self.bytes_from_inner += sum(len(chunk.stored) for chunk in fetched)
        for future, chunk in zip(futures, fetched, strict=True):
            future.set_result(chunk)
        await self._store(blob, fetched)  # flights stay open until stored: no second fetch

    async def _store(self, blob: BlobRef, fetched: list[FetchedChunk]) -> None:
        try:
            await asyncio.to_thread(self.cache.put_many, blob, fetched)
        except (OSError, CacheError) as exc:
            self.store_failures += 1
            log.warning("cache could not store %d chunks of blob %s: %s",
                        len(fetched), blob.blob_id, exc)  # fmt: skip

    # --- lookups ---------------------------------------------------------------------------

    async def _lookup(self, blob: BlobRef, infos: list[ChunkInfo]) -> list[FetchedChunk | None]:
        """Per chunk asked, the cached copy if present and it passed the check."""
        found, bad = await asyncio.to_thread(self._read_checked, blob, infos)
        hits = sum(1 for chunk in found if chunk is not None)
        self.hits += hits
        self.misses += len(found) - hits
        self.validation_failures += bad
        return found

    def _read_checked(
        self, blob: BlobRef, infos: list[ChunkInfo]
    ) -> tuple[list[FetchedChunk | None], int]:
        """Runs in a worker thread: read, decode or verify, discard bad copies (and count)."""
        stored = self._read_cached(blob, infos)
        found = [
            None if raw is None else self._checked(blob, info, raw)
            for info, raw in zip(infos, stored, strict=True)
        ]
        bad = sum(
            1 for raw, chunk in zip(stored, found, strict=True) if raw is not None and chunk is None
        )
        return found, bad

    def _read_cached(self, blob: BlobRef, infos: list[ChunkInfo]) -> list[bytes | None]:
        try:
            return self.cache.read_many(blob.blob_id, infos)
        except (OSError, CacheError) as exc:
            log.warning("cache read failed for blob %s, fetching instead: %s", blob.blob_id, exc)
            return [None] * len(infos)

    def _checked(self, blob: BlobRef, info: ChunkInfo, raw: bytes) -> FetchedChunk | None:
        """The cached chunk, or None after discarding a copy that failed the check."""
        try:
            return verify_chunk(blob, info, raw) if self.validate else _decoded(blob, info, raw)
        except ChunkDigestMismatch as exc:
            log.warning(
                "cached chunk failed validation, discarding and refetching: blob %s chunk %d "
                "expected %s actual %s", blob.blob_id, info.index, exc.expected.hex(),
                exc.actual.hex() or "(does not decode)",
            )  # fmt: skip
        self._discard(blob, info)
        return None

    def _discard(self, blob: BlobRef, info: ChunkInfo) -> None:
        try:
            self.cache.discard(blob.blob_id, info)
        except (OSError, CacheError) as exc:
            log.warning("cache could not discard blob %s chunk %d: %s", blob.blob_id,
                        info.index, exc)  # fmt: skip


_Key = tuple[str, int, bytes]  # blob id, chunk index, chunk digest
_Future = asyncio.Future[FetchedChunk]


def _key(blob: BlobRef, info: ChunkInfo) -> _Key:
    return blob.blob_id, info.index, info.digest


def _as_asked(chunk: FetchedChunk, info: ChunkInfo) -> FetchedChunk:
    """The chunk under the record asked for (records of one chunk differ in file_offset)."""
    return chunk if chunk.info == info else FetchedChunk(info, chunk.stored, chunk.data)


def _fail(futures: list[_Future], exc: BaseException) -> int:
    """Hand `exc` to the readers still waiting; how many were."""
    waiting = [future for future in futures if not future.done()]
    for future in waiting:
        if isinstance(exc, asyncio.CancelledError):
            future.cancel()
        else:
            future.set_exception(exc)
            future.exception()  # retrieved: no "never retrieved" log when nobody waits
    return len(waiting)


def _decoded(blob: BlobRef, info: ChunkInfo, stored: bytes) -> FetchedChunk:
    """Decode a cached chunk without hashing it (the fast path, without `validate`).

    A copy of the wrong size or that does not decode raises as `verify_chunk` would.
    """
    if len(stored) != info.compressed_size:
        raise ChunkDigestMismatch(blob.blob_id, info.index, info.digest, b"")
    if not info.compressed:
        if info.compressed_size != info.uncompressed_size:
            raise CorruptBootstrap(f"raw chunk {info.index} sizes",
                                   (info.compressed_size, info.uncompressed_size))  # fmt: skip
        return FetchedChunk(info, stored, stored)
    try:
        data = blob.compressor.decompress(stored, info.uncompressed_size)
    except ChunkDecodeError:
        raise ChunkDigestMismatch(blob.blob_id, info.index, info.digest, b"") from None
    return FetchedChunk(info, stored, data)


# --- small helpers -------------------------------------------------------------------------


def _checked_id(blob_id: str) -> str:
    if not _BLOB_ID.fullmatch(blob_id):
        raise InvalidBlobId(blob_id)
    return blob_id


def _record_of(info: ChunkInfo, compressor: int) -> ChunkRecord:
    return ChunkRecord(info.index, info.compressed_offset, info.compressed_size,
                       info.uncompressed_size, info.flags, compressor, info.digest)  # fmt: skip


def _blob_id_of(name: str) -> str | None:
    for suffix in (DATA_SUFFIX, MAP_SUFFIX, INDEX_SUFFIX):
        if name.endswith(suffix) and _BLOB_ID.fullmatch(name[: -len(suffix)]):
            return name[: -len(suffix)]
    return None


def _allocated(entry: os.DirEntry[str]) -> int | None:
    try:
        return entry.stat(follow_symlinks=False).st_blocks * 512
    except FileNotFoundError:  # removed meanwhile
        return None


def _sized(blob_id: str, fetched: Sequence[FetchedChunk]) -> list[FetchedChunk]:
    """One chunk per index, after checking each is the size its record says."""
    for chunk in fetched:
        info = chunk.info
        if len(chunk.stored) != info.compressed_size:
            raise ChunkSizeMismatch(blob_id, info.index, info.compressed_size, len(chunk.stored))
        if len(chunk.data) != info.uncompressed_size:
            raise ChunkSizeMismatch(blob_id, info.index, info.uncompressed_size, len(chunk.data))
    return list({chunk.info.index: chunk for chunk in fetched}.values())


def _slot(blob_id: str) -> int:
    """Offset of the blob's byte in the `.lock` file: 48 bits of a hash of its id."""
    return int.from_bytes(hashlib.blake2b(blob_id.encode(), digest_size=6).digest(), "little")


def _span(info: ChunkInfo) -> tuple[int, int]:
    """(start, length) of the chunk in the data file; locks need a length of at least 1."""
    return info.compressed_offset, max(1, info.compressed_size)


def _merged_spans(infos: Sequence[ChunkInfo]) -> list[tuple[int, int]]:
    """[start, end) ranges covering the chunks, sorted, overlapping or touching ones merged."""
    merged: list[tuple[int, int]] = []
    for start, length in sorted(_span(info) for info in infos):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], start + length))
        else:
            merged.append((start, start + length))
    return merged


def _pread_all(fd: int, length: int, offset: int) -> bytes:
    parts: list[bytes] = []
    while length:
        part = os.pread(fd, length, offset)
        if not part:
            break  # the file ends early: the caller's size check rejects the short read
        parts.append(part)
        length -= len(part)
        offset += len(part)
    return b"".join(parts)


def _pwrite_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view = view[written:]
        offset += written
