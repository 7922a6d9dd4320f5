"""The in-memory image: what a loaded bootstrap says, independent of v5 or v6 layout.

A `Bootstrap` is a table of `Inode`s keyed by their 1-based index, a blob table and the
image-wide settings. Loaders (v5, v6) produce it; the builder, `check`, `unpack` and the
FUSE filesystem consume it. Nothing here touches a file.
"""

from __future__ import annotations

import stat
from collections.abc import Iterator
from dataclasses import dataclass, field

from ._digest import Compressor, Digester
from ._errors import RafsError

# Chunk flags (the 80-byte chunk record and the v6 chunk table share them).
CHUNK_COMPRESSED = 0x1
CHUNK_HOLE = 0x2
CHUNK_ENCRYPTED = 0x4
CHUNK_BATCH = 0x8
CHUNK_HAS_CRC32 = 0x10


@dataclass(frozen=True, slots=True)
class ChunkInfo:
    """One chunk of a file: where its compressed bytes live and what they must hash to."""

    digest: bytes  # H(uncompressed bytes): the chunk id
    blob_index: int  # position in the image's blob table
    flags: int  # CHUNK_* bits
    compressed_size: int
    uncompressed_size: int
    compressed_offset: int  # in the blob file
    uncompressed_offset: int  # in the blob's uncompressed address space
    file_offset: int  # in the file this record belongs to
    index: int  # number of the chunk inside its blob
    crc32: int = 0

    @property
    def compressed(self) -> bool:
        return bool(self.flags & CHUNK_COMPRESSED)

    def placed(self, blob_index: int, file_offset: int) -> ChunkInfo:
        """This chunk in blob `blob_index`, at `file_offset` of a file. Built directly:
        it runs once per chunk of a build, and dataclasses.replace costs 3x more."""
        if blob_index == self.blob_index and file_offset == self.file_offset:
            return self
        return ChunkInfo(
            self.digest,
            blob_index,
            self.flags,
            self.compressed_size,
            self.uncompressed_size,
            self.compressed_offset,
            self.uncompressed_offset,
            file_offset,
            self.index,
            self.crc32,
        )


@dataclass(frozen=True, slots=True)
class BlobInfo:
    """One entry of the blob table (v5 blob table + extended table, or a v6 blob record)."""

    blob_id: str
    chunk_count: int = 0
    uncompressed_size: int = 0
    compressed_size: int = 0
    features: int = 0
    readahead_offset: int = 0
    readahead_size: int = 0


@dataclass(slots=True)
class Inode:
    """One name in the tree. Hardlinked names share `ino` but each has its own `index`."""

    index: int
    ino: int
    parent: int  # ino of the parent directory, 0 for the root
    name: bytes
    mode: int
    uid: int = 0
    gid: int = 0
    size: int = 0
    blocks: int = 0
    nlink: int = 1
    rdev: int = 0
    mtime: int = 0
    mtime_nsec: int = 0
    flags: int = 0
    digest: bytes = b""
    symlink: bytes | None = None
    xattrs: dict[bytes, bytes] = field(default_factory=dict)
    chunks: tuple[ChunkInfo, ...] = ()
    children: tuple[int, ...] = ()  # indices of the entries of a directory, in name order
    child_index: int = 0  # v5 i_child_index as stored (kept for empty directories)

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.mode)

    @property
    def is_reg(self) -> bool:
        return stat.S_ISREG(self.mode)

    @property
    def is_symlink(self) -> bool:
        return stat.S_ISLNK(self.mode)


class PathNotFound(RafsError):
    """A path looked up in a bootstrap does not exist."""


@dataclass(slots=True)
class Bootstrap:
    """A whole image's metadata."""

    version: int  # 5 or 6
    chunk_size: int
    flags: int  # superblock feature bits (v5 s_flags, v6 extended flags)
    compressor: Compressor
    digester: Digester
    blobs: list[BlobInfo]
    inodes: dict[int, Inode]  # by 1-based index
    root_index: int = 1
    prefetch: list[int] = field(default_factory=list)  # inos named by the prefetch table

    @property
    def root(self) -> Inode:
        return self.inodes[self.root_index]

    def children(self, inode: Inode) -> list[Inode]:
        return [self.inodes[i] for i in inode.children]

    def lookup(self, path: str | bytes) -> Inode:
        """Resolve an absolute path (no symlinks followed)."""
        raw = path.encode() if isinstance(path, str) else path
        node = self.root
        for part in raw.split(b"/"):
            if not part:
                continue
            node = self._child_named(node, part, raw)
        return node

    def _child_named(self, parent: Inode, name: bytes, path: bytes) -> Inode:
        for index in parent.children:
            child = self.inodes[index]
            if child.name == name:
                return child
        raise PathNotFound(f"no such path in bootstrap: {path.decode(errors='replace')}")

    def walk(self) -> Iterator[tuple[bytes, Inode]]:
        """Every entry with its absolute path, parents before children, children in name order."""
        stack: list[tuple[bytes, Inode]] = [(b"/", self.root)]
        while stack:
            path, node = stack.pop()
            yield path, node
            prefix = path if path.endswith(b"/") else path + b"/"
            for child in reversed(self.children(node)):
                stack.append((prefix + child.name, child))

    def blob_id(self, chunk: ChunkInfo) -> str:
        return self.blobs[chunk.blob_index].blob_id
