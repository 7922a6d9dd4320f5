"""Writing a data blob: files cut into chunks, hashed, compressed, stored once.

A `BlobWriter` is the builder's `ChunkSink`. Chunks are read, hashed and compressed in
batches, so that many small files share one task, with a bounded window of batches in
flight, so memory does not grow with the image: files named by path (a directory being
walked) by forked worker processes (`_cutters`), content handed over as a stream (a tar
member) by a thread pool (blake3 and zstandard release the GIL);
results are taken back in order and appended to the blob (and its sha256) by one file
thread in that order, so the blob is the same bytes on every run. A chunk whose
(digest, size) is known already, from this build or from a chunk dictionary, is not
stored again: its record is reused with a new file offset. The per-chunk steps are plain
tuples in tight loops: on a tree of small files they run tens of thousands of times.
The blob goes to a temporary file, synced and renamed to its sha256 only by `finish`
(or, with `settle_later`, by the time `settle` returns).
"""

from __future__ import annotations

import collections
import hashlib
import logging
import os
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Generic, Protocol, TypeVar

import zstandard

from ._cutters import Cut as _Cut
from ._cutters import ForkedCutters
from ._cutters import Source as _Source
from ._cutters import cut as _cut_one
from ._digest import Compressor, Digester
from ._errors import BuildError
from ._model import CHUNK_COMPRESSED, BlobInfo, ChunkInfo

_log = logging.getLogger(__name__)

NEW_BLOB = -1  # blob_index of chunks stored in the blob being written, until it has a place

K = TypeVar("K")

ZSTD_LEVEL = 3  # the level `Compressor.compress` uses by default
BATCH_BYTES = 1 << 20  # a worker task cuts chunks until it has read this much ...
BATCH_CHUNKS = 256  # ... or this many chunks: small files share one task


# What a worker made of one chunk (a `_Cut`): (digest, size, bytes to store or None if the
# chunk is known already, whether those bytes are compressed). Plain tuples: one per chunk,
# made and taken apart in tight loops, where a dataclass costs more than the chunk's Python
# work. A chunk still to read (a `_Read`): `length` bytes at `offset` of the file at `path`
# (`size` long).


class _Cuts(Protocol):
    def result(self) -> list[_Cut | None]: ...


@dataclass(slots=True)
class _Pending(Generic[K]):
    key: K
    size: int
    chunks: list[ChunkInfo]
    expected: int


_Slot = tuple[_Pending[K], int, _Source]  # file, offset, content (None: empty)
_Batch = tuple[list[_Slot[K]], _Cuts]


class BlobWriter:
    """Stores chunks for one new blob; reuses chunks of `known` (a chunk dictionary)."""

    def __init__(
        self,
        blob_dir: Path,
        *,
        chunk_size: int,
        compressor: Compressor,
        digester: Digester,
        known: dict[tuple[bytes, int], ChunkInfo] | None = None,
        threads: int | None = None,
        on_bytes: Callable[[int], None] | None = None,
        blob_index: int = NEW_BLOB,
    ) -> None:
        self.blob_dir = blob_dir
        self.chunk_size = chunk_size
        self.compressor = compressor
        self.digester = digester
        self.known: dict[tuple[bytes, int], ChunkInfo] = dict(known or {})
        self.threads = threads or max(2, os.cpu_count() or 2)
        self.window = self.threads * 3  # batches in flight
        self.on_bytes = on_bytes
        self.blob_index = blob_index  # of the chunks stored here; must not be one of `known`'s
        self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="blob-writer")
        self._compress = _per_thread_compress(compressor)
        self._file = tempfile.NamedTemporaryFile(  # noqa: SIM115 - closed by finish/abort
            dir=blob_dir, prefix=".blob-", delete=False
        )
        self._sha256 = hashlib.sha256()
        self._disk = ThreadPoolExecutor(1, thread_name_prefix="blob-file")  # write + sha256
        self._writes: collections.deque[Future[None]] = collections.deque()
        self.compressed_size = 0
        self.uncompressed_size = 0
        self.chunk_count = 0
        self.reused_chunks = 0
        self.reused_bytes = 0
        self.dict_chunks = 0  # of the reused ones, those found in the chunk dictionary
        self._made: Path | None = None
        self.settle_later = False  # finish without waiting for the blob to be synced
        self._settling: Future[None] | None = None
        # Files named by path are cut in forked processes (see _cutters), where fork exists.
        self.forked = hasattr(os, "fork")
        self._forked: ForkedCutters | None = None

    # --- ChunkSink ---------------------------------------------------------------------

    def add_file(self, stream: BinaryIO, size: int) -> tuple[ChunkInfo, ...]:
        """Read `stream` here (it may not be reopened or seekable); cut it in the pool."""
        ((_, chunks),) = self.add_streams([(None, stream, size)])  # runs to its end
        return chunks

    # --- many files through one pipeline ------------------------------------------------

    def add_files(
        self, files: Iterable[tuple[K, bytes, int]]
    ) -> Iterator[tuple[K, tuple[ChunkInfo, ...]]]:
        """Yield (key, chunk records) per file (key, path, size), in the order given.

        The files are read in the pool, a chunk at a time, so their reading overlaps.
        `files` is consumed as the pool makes room, so it may be produced by a walk.
        """
        return self._pipeline(self._slots(files), forked=self.forked)

    def add_streams(
        self, files: Iterable[tuple[K, BinaryIO, int]]
    ) -> Iterator[tuple[K, tuple[ChunkInfo, ...]]]:
        """Yield (key, chunk records) per file (key, stream, size), in the order given.

        Each stream is read to its `size` here, a chunk at a time, before the next file is
        asked for, so all may come from one sequential source (the members of a tar); the
        chunks are hashed and compressed in the thread pool while the next ones are read.
        """
        return self._pipeline(self._stream_slots(files))

    def _stream_slots(self, files: Iterable[tuple[K, BinaryIO, int]]) -> Iterator[_Slot[K]]:
        step = self.chunk_size
        for key, stream, size in files:
            pending = _Pending(key, size, [], -(-size // step))
            if not size:
                yield pending, 0, None
                continue
            for offset in range(0, size, step):
                yield pending, offset, _read_exact(stream, min(step, size - offset), size)

    def _slots(self, files: Iterable[tuple[K, bytes, int]]) -> Iterator[_Slot[K]]:
        step = self.chunk_size
        for key, path, size in files:
            pending = _Pending(key, size, [], -(-size // step))
            if size <= step:  # most files: one chunk, or none
                yield pending, 0, (path, 0, size, size) if size else None
                continue
            for offset in range(0, size, step):
                yield pending, offset, (path, offset, min(step, size - offset), size)

    def _pipeline(
        self, slots: Iterable[_Slot[K]], forked: bool = False
    ) -> Iterator[tuple[K, tuple[ChunkInfo, ...]]]:
        cutters = self._cutters() if forked else None
        submit = cutters.submit if cutters is not None else self._submit_to_threads
        inflight: collections.deque[_Batch[K]] = collections.deque()
        for batch in _batches(slots):
            # Take a result before sending the batch that may reuse its slot.
            yield from self._drain(inflight, self.window - 1)
            inflight.append((batch, submit([s[2] for s in batch])))
        yield from self._drain(inflight, 0)

    def _submit_to_threads(self, sources: list[_Source]) -> Future[list[_Cut | None]]:
        return self._pool.submit(self._cut_batch, sources)

    def _cutters(self) -> ForkedCutters | None:
        """The worker processes, forked on first use; None (use threads) if the system
        refuses the fork or the shared mapping (a pids limit, a tight memory limit)."""
        if self._forked is None and self.forked:
            try:
                self._forked = ForkedCutters(
                    self.threads,
                    -(-2 * self.window // self.threads),  # see _write
                    BATCH_BYTES + self.chunk_size,  # a batch stops once past BATCH_BYTES
                    read_chunk=_read_chunk,
                    digest_of=self.digester.function(),
                    compress=self._compress,
                    known=self.known,
                )
            except OSError as exc:
                _log.warning("cutting chunks on threads: cannot fork workers: %s", exc)
                self.forked = False
        return self._forked

    def _drain(
        self, inflight: collections.deque[_Batch[K]], keep: int
    ) -> Iterator[tuple[K, tuple[ChunkInfo, ...]]]:
        while len(inflight) > keep:
            batch, future = inflight.popleft()
            stored: list[bytes | memoryview] = []
            complete: list[_Pending[K]] = []
            done = 0
            for (pending, offset, _), cut in zip(batch, future.result(), strict=True):
                if cut is not None:
                    pending.chunks.append(self._place(cut, offset, stored))
                    done += cut[1]
                if len(pending.chunks) == pending.expected:
                    complete.append(pending)
            self._write(stored)  # before yielding: the caller may stop consuming
            if self.on_bytes:
                self.on_bytes(done)
            for pending in complete:
                yield pending.key, tuple(pending.chunks)

    def _cut_batch(self, sources: list[_Source]) -> list[_Cut | None]:
        """Read, hash and compress a batch on a pool thread."""
        digest_of, compress, known = self.digester.function(), self._compress(), self.known
        return [_cut_one(source, _read_chunk, digest_of, compress, known) for source in sources]

    def _place(self, cut: _Cut, file_offset: int, stored: list[bytes | memoryview]) -> ChunkInfo:
        digest, size, data, compressed = cut
        found = self.known.get((digest, size))
        if found is not None:
            self.reused_chunks += 1
            self.reused_bytes += size
            self.dict_chunks += found.blob_index != self.blob_index
            return found.placed(found.blob_index, file_offset)
        assert data is not None
        chunk = ChunkInfo(
            digest,
            self.blob_index,
            CHUNK_COMPRESSED if compressed else 0,
            len(data),
            size,
            self.compressed_size,
            self.uncompressed_size,
            file_offset,
            self.chunk_count,
        )
        stored.append(data)
        self.compressed_size += len(data)
        self.uncompressed_size += size
        self.chunk_count += 1
        self.known[(digest, size)] = chunk
        return chunk

    def _write(self, stored: list[bytes | memoryview]) -> None:
        """Append to the blob and its sha256 on the file thread, in order.

        At most `window` batches wait to be written: a forked worker's slot is reused
        only after `2 * window` more batches were sent, so the views of it being written
        stay intact until they are (`window` in flight, `window` waiting here).
        """
        while self._writes and (self._writes[0].done() or len(self._writes) >= self.window):
            self._writes.popleft().result()  # raises the first write error here
        # One entry per batch, stored bytes or not: the count above is of batches.
        self._writes.append(self._disk.submit(self._append, stored) if stored else _NOTHING)

    def _append(self, stored: list[bytes | memoryview]) -> None:
        """One gathered write per batch, straight from the chunks' bytes."""
        update = self._sha256.update
        for part in stored:
            update(part)
        _write_all(self._file.fileno(), stored)

    # --- the end -----------------------------------------------------------------------

    def finish(self) -> BlobInfo | None:
        """Close the blob and name it by its sha256; None if no new chunk was stored.

        With `settle_later` set, the blob is synced and renamed on the file thread while
        the caller goes on (laying out the bootstrap); `settle` waits for that.
        """
        self._pool.shutdown()
        if self._forked is not None:
            self._forked.close()
        while self._writes:
            self._writes.popleft().result()
        info = None
        if self.chunk_count:
            info = BlobInfo(
                blob_id=self._sha256.hexdigest(),
                chunk_count=self.chunk_count,
                uncompressed_size=self.uncompressed_size,
                compressed_size=self.compressed_size,
            )
        self._settling = self._disk.submit(self._put_in_place, info)
        self._disk.shutdown(wait=False)
        if not self.settle_later:
            self.settle()
        return info

    def settle(self) -> None:
        """Wait until the blob `finish` named is synced to disk and renamed into place."""
        if self._settling is None:
            raise RuntimeError("settle before finish")
        self._settling.result()

    def _put_in_place(self, info: BlobInfo | None) -> None:
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        if info is None:
            os.unlink(self._file.name)
            return
        final = self.blob_dir / info.blob_id
        if not final.exists():
            self._made = final  # ours to remove again if the build fails after this
        os.replace(self._file.name, final)

    def abort(self) -> None:
        """Drop everything written; nothing is left in the blob dir."""
        self._pool.shutdown(cancel_futures=True)
        if self._forked is not None:
            self._forked.kill()
        self._disk.shutdown(cancel_futures=True)
        self._file.close()
        Path(self._file.name).unlink(missing_ok=True)
        if self._made is not None:
            self._made.unlink(missing_ok=True)


_NOTHING: Future[None] = Future()  # the write of a batch with nothing to store
_NOTHING.set_result(None)


def _batches(slots: Iterable[_Slot[K]]) -> Iterator[list[_Slot[K]]]:
    batch: list[_Slot[K]] = []
    size = 0
    for slot in slots:
        batch.append(slot)
        source = slot[2]
        size += 0 if source is None else len(source) if isinstance(source, bytes) else source[2]
        if size >= BATCH_BYTES or len(batch) >= BATCH_CHUNKS:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def _write_all(fd: int, parts: list[bytes | memoryview]) -> None:
    """Write `parts` back to back at the file position, however the kernel splits it."""
    views = [memoryview(p) for p in parts]
    i = 0
    while i < len(views):
        done = os.writev(fd, views[i : i + _IOV_MAX])
        while i < len(views) and done >= views[i].nbytes:
            done -= views[i].nbytes
            i += 1
        if done:
            views[i] = views[i][done:]


_IOV_MAX = os.sysconf("SC_IOV_MAX") if hasattr(os, "sysconf") else 16


def _read_chunk(path: bytes, offset: int, length: int, size: int) -> bytes:
    """`length` bytes at `offset` of the file at `path` (whose size was `size`)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise BuildError(f"cannot read {os.fsdecode(path)}: {exc.strerror}") from exc
    try:
        data = os.pread(fd, length, offset)
        while len(data) < length:  # a short read: rare, but a file may shrink
            more = os.pread(fd, length - len(data), offset + len(data))
            if not more:
                raise BuildError(
                    f"file shrank while reading: {os.fsdecode(path)}, expected {size} bytes"
                )
            data += more
    except OSError as exc:
        raise BuildError(f"cannot read {os.fsdecode(path)}: {exc.strerror}") from exc
    finally:
        os.close(fd)
    return data


def _per_thread_compress(compressor: Compressor) -> Callable[[], Callable[[bytes], bytes]]:
    """A function giving the calling thread its compress function: with one zstd context
    per worker thread instead of per chunk (a context makes the same frame whether fresh or
    reused; it may not be shared by threads)."""
    if compressor is not Compressor.ZSTD:
        return lambda: compressor.compress
    local = threading.local()

    def for_this_thread() -> Callable[[bytes], bytes]:
        cctx = getattr(local, "cctx", None)
        if cctx is None:
            cctx = local.cctx = zstandard.ZstdCompressor(level=ZSTD_LEVEL)
        compress: Callable[[bytes], bytes] = cctx.compress
        return compress

    return for_this_thread


def _read_exact(stream: BinaryIO, length: int, size: int) -> bytes:
    parts: list[bytes] = []
    left = length
    while left:
        data = stream.read(left)
        if not data:
            raise BuildError(f"file shrank while reading: expected {size} bytes")
        parts.append(data)
        left -= len(data)
    return parts[0] if len(parts) == 1 else b"".join(parts)
