"""Test blobs of real compressed chunks, and a fake inner ChunkSource serving them.

Everything is derived from a seed, so a subprocess rebuilds the very same blob from its
arguments. The fake source verifies what it returns with the real `verify_chunk`, like an
origin does, and counts its calls.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Sequence
from dataclasses import dataclass, field

from rafs._chunksource import BlobRef, FetchedChunk, verify_chunk
from rafs._digest import Compressor, Digester
from rafs._model import CHUNK_COMPRESSED, ChunkInfo


@dataclass
class Blob:
    ref: BlobRef
    chunks: list[ChunkInfo]
    stored: list[bytes]  # per chunk, as it lies in the blob
    data: list[bytes]  # per chunk, uncompressed

    @property
    def blob_id(self) -> str:
        return self.ref.blob_id

    def fetched(self, index: int) -> FetchedChunk:
        return verify_chunk(self.ref, self.chunks[index], self.stored[index])

    def image(self) -> bytes:
        """The whole blob file: chunks back to back."""
        return b"".join(self.stored)


def make_blob(
    blob_id: str, count: int, *, seed: int = 0, min_size: int = 1024, max_size: int = 16384
) -> Blob:
    """`count` chunks; every fifth one random (stored raw), the others compressible."""
    rng = random.Random(f"{blob_id}/{seed}")
    ref = BlobRef(blob_id, Compressor.ZSTD, Digester.BLAKE3)
    chunks, stored, data = [], [], []
    offset = uncompressed = 0
    for index in range(count):
        raw = _chunk_data(rng, index, min_size, max_size)
        packed, flags = _pack(raw, incompressible=index % 5 == 4)
        digest = ref.digester.hash(raw)
        chunks.append(ChunkInfo(digest, 0, flags, len(packed), len(raw), offset, uncompressed,
                                uncompressed, index))  # fmt: skip
        stored.append(packed)
        data.append(raw)
        offset += len(packed)
        uncompressed += len(raw)
    return Blob(ref, chunks, stored, data)


def _chunk_data(rng: random.Random, index: int, min_size: int, max_size: int) -> bytes:
    size = rng.randint(min_size, max_size)
    if index % 5 == 4:
        return rng.randbytes(size)
    word = rng.randbytes(rng.randint(8, 64))
    return (word * (size // len(word) + 1))[:size]


def _pack(raw: bytes, *, incompressible: bool) -> tuple[bytes, int]:
    packed = Compressor.ZSTD.compress(raw)
    if incompressible or len(packed) >= len(raw):
        return raw, 0
    return packed, CHUNK_COMPRESSED


@dataclass
class FakeSource:
    """An inner ChunkSource over in-memory blobs: verifies, counts, can lie or be slow."""

    blobs: dict[str, Blob]
    delay: float = 0.0
    calls: list[list[int]] = field(default_factory=list)
    lies: set[int] = field(default_factory=set)  # chunk indices served with a wrong byte
    closed: bool = False

    async def get(self, blob: BlobRef, chunks: Sequence[ChunkInfo]) -> list[FetchedChunk]:
        self.calls.append([c.index for c in chunks])
        if self.delay:
            await asyncio.sleep(self.delay)
        source = self.blobs[blob.blob_id]
        return [verify_chunk(blob, c, self._bytes(source, c.index)) for c in chunks]

    def _bytes(self, source: Blob, index: int) -> bytes:
        stored = source.stored[index]
        if index in self.lies:
            return flip_byte(stored, len(stored) // 2)
        return stored

    async def close(self) -> None:
        self.closed = True


def flip_byte(data: bytes, at: int) -> bytes:
    return data[:at] + bytes([data[at] ^ 0x5A]) + data[at + 1 :]
