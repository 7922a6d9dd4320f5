"""The builder's input: a filesystem tree to be turned into an image.

Importers (a directory on disk, tar layers, an OCI image layout) produce a tree of
`SourceEntry`. A regular file's content is either still to be read (`path`), or was
already cut into chunks by the importer through a `ChunkSink` (tar streams cannot be
read twice, so their content is stored as it passes). Either way the builder ends up
with the same `ChunkInfo` list per file. A directory on disk need not be read into a
tree first: the builder can list it as it lays the image out (`build(list_children=...)`).
"""

from __future__ import annotations

import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import BinaryIO, Protocol

from ._model import ChunkInfo


class ChunkSink(Protocol):
    """Cuts a stream into chunks, stores the new ones in the blob, returns the records.

    `size` is the number of bytes to read from `stream`; the returned records carry
    `file_offset` already set. Identical chunks are stored once.
    """

    def add_file(self, stream: BinaryIO, size: int) -> tuple[ChunkInfo, ...]: ...


@dataclass(eq=False, slots=True)
class SourceEntry:
    """One name of the tree to build. Directories hold their entries in `children`."""

    name: bytes
    mode: int  # full st_mode: type bits and permissions
    uid: int = 0
    gid: int = 0
    mtime: int = 0  # seconds
    mtime_nsec: int = 0
    rdev: int = 0
    size: int = 0  # regular files: content length
    symlink: bytes | None = None
    xattrs: dict[bytes, bytes] = field(default_factory=dict)
    # Regular files only. Names with the same non-None `link_key` are one hardlinked inode.
    link_key: object | None = None
    path: bytes | None = None  # on disk: content still to read from here ...
    chunks: tuple[ChunkInfo, ...] | None = None  # ... or already stored
    children: dict[bytes, SourceEntry] = field(default_factory=dict)

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.mode)

    @property
    def is_reg(self) -> bool:
        return stat.S_ISREG(self.mode)

    def sorted_children(self) -> list[SourceEntry]:
        return [self.children[name] for name in sorted(self.children)]

    def walk(self, prefix: bytes = b"") -> Iterator[tuple[bytes, SourceEntry]]:
        """Depth-first, parents first, children in byte order of their names."""
        here = prefix + b"/" + self.name if prefix or self.name != b"/" else b"/"
        yield here, self
        base = b"" if here == b"/" else here
        for child in self.sorted_children():
            yield from child.walk(base)


def new_root(mode: int = stat.S_IFDIR | 0o755) -> SourceEntry:
    return SourceEntry(name=b"/", mode=mode)
