"""A data blob for origin tests: chunks laid out, compressed and hashed as a builder does."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from rafs import ChunkInfo, Compressor, Digester
from rafs._chunksource import BlobRef
from rafs._model import CHUNK_COMPRESSED

CHUNK = 64 << 10


@dataclass(frozen=True)
class StoredBlob:
    path: Path
    ref: BlobRef
    chunks: tuple[ChunkInfo, ...]
    content: bytes  # the file the chunks were cut from

    @property
    def blob_id(self) -> str:
        return self.ref.blob_id

    def data_of(self, chunk: ChunkInfo) -> bytes:
        return self.content[chunk.file_offset : chunk.file_offset + chunk.uncompressed_size]


def make_blob(directory: Path, chunk_count: int = 12, *, compressible: bool = False) -> StoredBlob:
    """`chunk_count` distinct 64 KiB chunks, zstd where it shrinks them, raw otherwise
    (random chunks are stored raw, 64 KiB each, back to back), laid out as a builder does."""
    directory.mkdir(parents=True, exist_ok=True)
    content = b"".join(_chunk_bytes(i, compressible) for i in range(chunk_count))
    stored, chunks = bytearray(), []
    for index in range(chunk_count):
        data = content[index * CHUNK : (index + 1) * CHUNK]
        packed = Compressor.ZSTD.compress(data)
        raw = len(packed) >= len(data)
        chunks.append(ChunkInfo(
            digest=Digester.BLAKE3.hash(data), blob_index=0,
            flags=0 if raw else CHUNK_COMPRESSED, compressed_size=len(data if raw else packed),
            uncompressed_size=len(data), compressed_offset=len(stored),
            uncompressed_offset=index * CHUNK, file_offset=index * CHUNK, index=index,
        ))  # fmt: skip
        stored += data if raw else packed
    blob_id = hashlib.sha256(stored).hexdigest()
    (directory / blob_id).write_bytes(stored)
    ref = BlobRef(blob_id, Compressor.ZSTD, Digester.BLAKE3, len(stored))
    return StoredBlob(directory / blob_id, ref, tuple(chunks), content)


def _chunk_bytes(index: int, compressible: bool) -> bytes:
    if not compressible:
        return os.urandom(CHUNK)
    return ((b"chunk %d " % index) * CHUNK)[:CHUNK]


def corrupt(path: Path, offset: int) -> None:
    """Flip one byte of a stored blob in place."""
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0xFF]))


def random_blob_id() -> str:
    return os.urandom(32).hex()
