"""The Nydus image: RAFS v5 (read and write) and v6 (read) bootstraps, blobs, builder."""

from ._digest import Compressor, Digester
from ._errors import (
    BlobMissing,
    BuildError,
    CheckFailed,
    ChunkDigestMismatch,
    CorruptBootstrap,
    RafsError,
    UnsupportedFormat,
)
from ._model import BlobInfo, Bootstrap, ChunkInfo, Inode, PathNotFound
from ._source import ChunkSink, SourceEntry

__all__ = [
    "BlobInfo",
    "BlobMissing",
    "Bootstrap",
    "BuildError",
    "CheckFailed",
    "ChunkDigestMismatch",
    "ChunkInfo",
    "ChunkSink",
    "Compressor",
    "CorruptBootstrap",
    "Digester",
    "Inode",
    "PathNotFound",
    "RafsError",
    "SourceEntry",
    "UnsupportedFormat",
]
