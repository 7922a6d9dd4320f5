"""Where chunk bytes come from: the small async interfaces that origins, the local cache
and (later) the peer mesh implement, and the one rule they share.

The rule: a `ChunkSource` returns a chunk only after its uncompressed bytes hashed to the
chunk's digest. A source that gets bad bytes raises `ChunkDigestMismatch` (an origin) or
throws the copy away and asks the source it wraps again (a cache). Sources compose by
wrapping: cache -> mesh -> origin.

A `BlobBackend` is the raw layer under an origin: byte ranges of a blob as stored, no
checking (an OCI registry, a directory, S3-compatible storage).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from ._digest import ChunkDecodeError, Compressor, Digester
from ._errors import ChunkDigestMismatch, CorruptBootstrap
from ._model import Bootstrap, ChunkInfo


@dataclass(frozen=True, slots=True)
class BlobRef:
    """What a source needs to fetch and verify chunks of one blob."""

    blob_id: str
    compressor: Compressor
    digester: Digester
    compressed_size: int = 0  # 0 when unknown

    @classmethod
    def of(cls, boot: Bootstrap, blob_index: int) -> BlobRef:
        blob = boot.blobs[blob_index]
        return cls(blob.blob_id, boot.compressor, boot.digester, blob.compressed_size)


@dataclass(frozen=True, slots=True)
class FetchedChunk:
    """A verified chunk: `stored` as it lies in the blob, `data` uncompressed."""

    info: ChunkInfo
    stored: bytes
    data: bytes


class ChunkSource(Protocol):
    async def get(self, blob: BlobRef, chunks: Sequence[ChunkInfo]) -> list[FetchedChunk]:
        """The chunks, in the order asked, each verified against its digest."""
        ...

    async def close(self) -> None: ...


class BlobBackend(Protocol):
    async def read(self, blob_id: str, offset: int, length: int) -> bytes:
        """Exactly `length` bytes of the blob from `offset`, or an error."""
        ...

    async def blob_size(self, blob_id: str) -> int: ...

    async def close(self) -> None: ...


def verify_chunk(blob: BlobRef, info: ChunkInfo, stored: bytes) -> FetchedChunk:
    """Decode and hash one stored chunk; raise if it is not the chunk the record names."""
    if len(stored) != info.compressed_size:
        raise ChunkDigestMismatch(blob.blob_id, info.index, info.digest, b"")
    if info.compressed:
        try:
            data = blob.compressor.decompress(stored, info.uncompressed_size)
        except ChunkDecodeError:
            raise ChunkDigestMismatch(blob.blob_id, info.index, info.digest, b"") from None
    elif info.compressed_size != info.uncompressed_size:
        raise CorruptBootstrap(
            f"raw chunk {info.index} sizes", (info.compressed_size, info.uncompressed_size)
        )
    else:
        data = stored
    actual = blob.digester.hash(data)
    if actual != info.digest:
        raise ChunkDigestMismatch(blob.blob_id, info.index, info.digest, actual)
    return FetchedChunk(info, stored, data)
