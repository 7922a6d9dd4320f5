"""Writing a data blob: files cut into chunks, hashed, compressed, stored once.

A `BlobWriter` is the builder's `ChunkSink`. Chunks go through a thread pool (blake3,
sha256 and zstandard release the GIL) with a bounded window of chunks in flight, so
memory does not grow with the image; results are taken back in order, so the blob is the
same bytes on every run. A chunk whose (digest, size) is known already, from this build or
from a chunk dictionary, is not stored again: its record is reused with a new file offset.
The blob goes to a temporary file, renamed to its sha256 only by `finish`.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Generic, TypeVar

from ._digest import Compressor, Digester
from ._errors import BuildError
from ._model import CHUNK_COMPRESSED, BlobInfo, ChunkInfo

NEW_BLOB = -1  # blob_index of chunks stored in the blob being written, until it has a place

K = TypeVar("K")


@dataclass(frozen=True, slots=True)
class _Cut:
    digest: bytes
    size: int
    stored: bytes | None  # compressed (or raw) bytes to store, None if already known
    compressed: bool


@dataclass(slots=True)
class _Pending(Generic[K]):
    key: K
    size: int
    chunks: list[ChunkInfo]
    expected: int


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
    ) -> None:
        self.blob_dir = blob_dir
        self.chunk_size = chunk_size
        self.compressor = compressor
        self.digester = digester
        self.known: dict[tuple[bytes, int], ChunkInfo] = dict(known or {})
        self.threads = threads or max(2, os.cpu_count() or 2)
        self.window = self.threads * 3
        self.on_bytes = on_bytes
        self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="blob-writer")
        self._file = tempfile.NamedTemporaryFile(  # noqa: SIM115 - closed by finish/abort
            dir=blob_dir, prefix=".blob-", delete=False
        )
        self._sha256 = hashlib.sha256()
        self.compressed_size = 0
        self.uncompressed_size = 0
        self.chunk_count = 0
        self.reused_chunks = 0
        self.reused_bytes = 0
        self.dict_chunks = 0  # of the reused ones, those found in the chunk dictionary
        self._made: Path | None = None

    # --- ChunkSink ---------------------------------------------------------------------

    def add_file(self, stream: BinaryIO, size: int) -> tuple[ChunkInfo, ...]:
        for _, chunks in self.add_files([(None, lambda: stream, size)], close=False):
            return chunks
        raise AssertionError("add_files yields once per file")

    # --- many files through one pipeline ------------------------------------------------

    def add_files(
        self,
        files: Iterable[tuple[K, Callable[[], BinaryIO], int]],
        *,
        close: bool = True,
    ) -> Iterator[tuple[K, tuple[ChunkInfo, ...]]]:
        """Yield (key, chunk records) per file, in the order given."""
        inflight: collections.deque[tuple[_Pending[K], int, Future[_Cut]]] = collections.deque()
        for key, opener, size in files:
            pending = _Pending(key, size, [], -(-size // self.chunk_size))
            if pending.expected == 0:
                yield from self._drain(inflight, 0)
                yield key, ()
                continue
            stream = opener()
            try:
                for offset in range(0, size, self.chunk_size):
                    data = _read_exact(stream, min(self.chunk_size, size - offset), size)
                    inflight.append((pending, offset, self._pool.submit(self._cut, data)))
                    yield from self._drain(inflight, self.window)
            finally:
                if close:
                    stream.close()
        yield from self._drain(inflight, 0)

    def _drain(
        self, inflight: collections.deque[tuple[_Pending[K], int, Future[_Cut]]], keep: int
    ) -> Iterator[tuple[K, tuple[ChunkInfo, ...]]]:
        while len(inflight) > keep:
            pending, offset, future = inflight.popleft()
            pending.chunks.append(self._place(future.result(), offset))
            if len(pending.chunks) == pending.expected:
                yield pending.key, tuple(pending.chunks)

    def _cut(self, data: bytes) -> _Cut:
        digest = self.digester.hash(data)
        if (digest, len(data)) in self.known:
            return _Cut(digest, len(data), None, False)
        packed = self.compressor.compress(data)
        if len(packed) < len(data):
            return _Cut(digest, len(data), packed, True)
        return _Cut(digest, len(data), data, False)

    def _place(self, cut: _Cut, file_offset: int) -> ChunkInfo:
        if self.on_bytes:
            self.on_bytes(cut.size)
        found = self.known.get((cut.digest, cut.size))
        if found is not None:
            self.reused_chunks += 1
            self.reused_bytes += cut.size
            self.dict_chunks += found.blob_index != NEW_BLOB
            return dataclasses.replace(found, file_offset=file_offset)
        assert cut.stored is not None
        chunk = ChunkInfo(
            digest=cut.digest,
            blob_index=NEW_BLOB,
            flags=CHUNK_COMPRESSED if cut.compressed else 0,
            compressed_size=len(cut.stored),
            uncompressed_size=cut.size,
            compressed_offset=self.compressed_size,
            uncompressed_offset=self.uncompressed_size,
            file_offset=file_offset,
            index=self.chunk_count,
        )
        self._file.write(cut.stored)
        self._sha256.update(cut.stored)
        self.compressed_size += len(cut.stored)
        self.uncompressed_size += cut.size
        self.chunk_count += 1
        self.known[(cut.digest, cut.size)] = chunk
        return chunk

    # --- the end -----------------------------------------------------------------------

    def finish(self) -> BlobInfo | None:
        """Close the blob and name it by its sha256; None if no new chunk was stored."""
        self._pool.shutdown()
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        if self.chunk_count == 0:
            os.unlink(self._file.name)
            return None
        blob_id = self._sha256.hexdigest()
        final = self.blob_dir / blob_id
        if not final.exists():
            self._made = final  # ours to remove again if the build fails after this
        os.replace(self._file.name, final)
        return BlobInfo(
            blob_id=blob_id,
            chunk_count=self.chunk_count,
            uncompressed_size=self.uncompressed_size,
            compressed_size=self.compressed_size,
        )

    def abort(self) -> None:
        """Drop everything written; nothing is left in the blob dir."""
        self._pool.shutdown(cancel_futures=True)
        self._file.close()
        Path(self._file.name).unlink(missing_ok=True)
        if self._made is not None:
            self._made.unlink(missing_ok=True)


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
