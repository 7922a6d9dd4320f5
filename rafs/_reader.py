"""Reading file content out of an image's blobs, every chunk verified.

`LocalBlobs` finds blobs in a directory by id. `ChunkReader` reads one chunk: the stored
bytes at its compressed offset, decompressed when its flag says so, and hashed; a chunk
whose digest does not match raises `ChunkDigestMismatch` and its bytes are never returned.
`FileStream` is a read-only file object over one regular file, for tar writers and copies.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path

from ._errors import BlobMissing, CorruptBootstrap
from ._model import Bootstrap, ChunkInfo, Inode


class LocalBlobs:
    """Blobs stored as files named by their id in one directory."""

    def __init__(self, blob_dir: Path) -> None:
        self.blob_dir = blob_dir
        self._files: dict[str, io.BufferedReader] = {}

    def path(self, blob_id: str) -> Path:
        return self.blob_dir / blob_id

    def read(self, blob_id: str, offset: int, size: int) -> bytes:
        f = self._open(blob_id)
        data = os.pread(f.fileno(), size, offset)
        if len(data) != size:
            raise BlobMissing(
                f"blob {blob_id} is short: wanted {size} bytes at {offset}, got {len(data)}"
            )
        return data

    def _open(self, blob_id: str) -> io.BufferedReader:
        f = self._files.get(blob_id)
        if f is None:
            try:
                f = open(self.path(blob_id), "rb")  # noqa: SIM115 - kept open, closed by close()
            except FileNotFoundError:
                raise BlobMissing(f"blob {blob_id} not found in {self.blob_dir}") from None
            self._files[blob_id] = f
        return f

    def close(self) -> None:
        for f in self._files.values():
            f.close()
        self._files.clear()

    def __enter__(self) -> LocalBlobs:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


@dataclass
class ChunkReader:
    boot: Bootstrap
    blobs: LocalBlobs

    def read(self, chunk: ChunkInfo) -> bytes:
        from ._errors import ChunkDigestMismatch

        blob_id = self.boot.blob_id(chunk)
        stored = self.blobs.read(blob_id, chunk.compressed_offset, chunk.compressed_size)
        if chunk.compressed:
            data = self.boot.compressor.decompress(stored, chunk.uncompressed_size)
        elif chunk.compressed_size != chunk.uncompressed_size:
            raise CorruptBootstrap(
                f"raw chunk {chunk.index} of blob {blob_id} sizes",
                (chunk.compressed_size, chunk.uncompressed_size),
            )
        else:
            data = stored
        actual = self.boot.digester.hash(data)
        if actual != chunk.digest:
            raise ChunkDigestMismatch(blob_id, chunk.index, chunk.digest, actual)
        return data


class FileStream(io.RawIOBase):
    """Sequential reads of one regular file; holes between chunk records read as zeros."""

    def __init__(self, reader: ChunkReader, inode: Inode) -> None:
        self.reader = reader
        self.inode = inode
        self.pos = 0
        self._chunks = sorted(inode.chunks, key=lambda c: c.file_offset)
        self._next = 0
        self._buf = b""
        self._buf_start = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview | bytearray) -> int:  # type: ignore[override]
        """Fill as much of `buffer` as the file has left (tar writers want full reads)."""
        want = min(len(buffer), self.inode.size - self.pos)
        done = 0
        while done < want:
            data = self._window(want - done)
            buffer[done : done + len(data)] = data
            done += len(data)
            self.pos += len(data)
        return done

    def _window(self, want: int) -> bytes:
        offset = self.pos - self._buf_start
        if offset >= len(self._buf):
            self._load()
            offset = self.pos - self._buf_start
        return self._buf[offset : offset + want]

    def _load(self) -> None:
        chunk = self._chunks[self._next] if self._next < len(self._chunks) else None
        if chunk is None or chunk.file_offset > self.pos:
            end = chunk.file_offset if chunk else self.inode.size
            self._buf, self._buf_start = bytes(end - self.pos), self.pos
            return
        self._buf, self._buf_start = self.reader.read(chunk), chunk.file_offset
        self._next += 1
