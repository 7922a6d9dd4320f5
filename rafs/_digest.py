"""Digesters and compressors named by the superblock flags.

The chunk id is the digest of the uncompressed chunk; compression is per chunk and a chunk
that does not shrink is stored raw (its COMPRESSED flag is clear).
"""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Callable
from typing import Protocol

import blake3
import zstandard

from ._errors import RafsError, UnsupportedFormat

DIGEST_SIZE = 32


class _Hasher(Protocol):
    def update(self, data: bytes, /) -> object: ...
    def digest(self) -> bytes: ...


class Digester(enum.Enum):
    BLAKE3 = "blake3"
    SHA256 = "sha256"

    def hash(self, data: bytes) -> bytes:
        if self is Digester.BLAKE3:
            return blake3.blake3(data, max_threads=1).digest()
        return hashlib.sha256(data).digest()

    def function(self) -> Callable[[bytes], bytes]:
        """`hash` without its per-call dispatch, for loops over many chunks."""
        if self is Digester.BLAKE3:
            return _blake3_digest
        return _sha256_digest

    def hasher(self) -> _Hasher:
        if self is Digester.BLAKE3:
            return blake3.blake3()
        return hashlib.sha256()


def _blake3_digest(data: bytes) -> bytes:
    return blake3.blake3(data, max_threads=1).digest()


def _sha256_digest(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


class Compressor(enum.Enum):
    NONE = "none"
    LZ4_BLOCK = "lz4_block"
    GZIP = "gzip"
    ZSTD = "zstd"

    def compress(self, data: bytes, level: int = 3) -> bytes:
        return _COMPRESS[self](data, level)

    def decompress(self, data: bytes, uncompressed_size: int) -> bytes:
        try:
            out = _DECOMPRESS[self](data, uncompressed_size)
        except RafsError:
            raise
        except Exception as exc:  # codec libraries raise their own types; translate here only
            raise ChunkDecodeError(f"{self.value} chunk does not decode: {exc}") from exc
        if len(out) != uncompressed_size:
            raise ChunkDecodeError(
                f"{self.value} chunk decodes to {len(out)} bytes, record says {uncompressed_size}"
            )
        return out


class ChunkDecodeError(RafsError):
    """A chunk's stored bytes are not a valid stream of the image's compressor."""


def _zstd_compress(data: bytes, level: int) -> bytes:
    return zstandard.ZstdCompressor(level=level).compress(data)


def _zstd_decompress(data: bytes, size: int) -> bytes:
    return zstandard.ZstdDecompressor().decompress(data, max_output_size=size)


def _lz4_compress(data: bytes, level: int) -> bytes:
    import lz4.block

    out: bytes = lz4.block.compress(data, store_size=False)
    return out


def _lz4_decompress(data: bytes, size: int) -> bytes:
    import lz4.block

    out: bytes = lz4.block.decompress(data, uncompressed_size=size)
    return out


def _gzip_compress(data: bytes, level: int) -> bytes:
    import gzip

    return gzip.compress(data, compresslevel=max(1, min(level, 9)), mtime=0)


def _gzip_decompress(data: bytes, size: int) -> bytes:
    import zlib

    d = zlib.decompressobj(wbits=31)
    out = d.decompress(data, size + 1)
    return out


def _identity(data: bytes, _: int) -> bytes:
    return data


_COMPRESS: dict[Compressor, Callable[[bytes, int], bytes]] = {
    Compressor.NONE: _identity,
    Compressor.LZ4_BLOCK: _lz4_compress,
    Compressor.GZIP: _gzip_compress,
    Compressor.ZSTD: _zstd_compress,
}
_DECOMPRESS: dict[Compressor, Callable[[bytes, int], bytes]] = {
    Compressor.NONE: _identity,
    Compressor.LZ4_BLOCK: _lz4_decompress,
    Compressor.GZIP: _gzip_decompress,
    Compressor.ZSTD: _zstd_decompress,
}


def parse_digester(name: str) -> Digester:
    try:
        return Digester(name)
    except ValueError:
        raise UnsupportedFormat(f"unknown digester {name!r} (blake3 or sha256)") from None


def parse_compressor(name: str) -> Compressor:
    try:
        return Compressor(name)
    except ValueError:
        raise UnsupportedFormat(
            f"unknown compressor {name!r} (none, zstd, lz4_block, gzip)"
        ) from None
