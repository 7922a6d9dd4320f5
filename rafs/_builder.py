"""Turning a `SourceEntry` tree into a RAFS v5 image: indices, chunks, digests, tables.

The steps follow the Nydus builder so that the same tree gives the same bootstrap:
indices are given a directory's children as one block before any grandchild (§11.1 of
the format notes); file content is stored in index order; digests are computed from the
leaves up; directory sizes, block counts and link counts are derived, never copied.
"""

from __future__ import annotations

import dataclasses
import gc
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from . import _v5layout as L
from ._blobwriter import NEW_BLOB, BlobWriter
from ._digest import Compressor, Digester
from ._errors import BuildError
from ._model import BlobInfo, Bootstrap, ChunkInfo, Inode
from ._source import SourceEntry

DEFAULT_CHUNK_SIZE = 0x100000


@dataclass(frozen=True)
class BuildOptions:
    chunk_size: int = DEFAULT_CHUNK_SIZE
    compressor: Compressor = Compressor.ZSTD
    digester: Digester = Digester.BLAKE3
    explicit_uidgid: bool = True
    prefetch_files: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        size = self.chunk_size
        if size & (size - 1) or not L.MIN_CHUNK_SIZE <= size <= L.MAX_CHUNK_SIZE:
            raise BuildError(f"chunk size {size:#x} is not a power of two in 0x1000..0x1000000")

    @property
    def flags(self) -> int:
        flags = {
            Compressor.NONE: L.FLAG_COMPRESSION_NONE,
            Compressor.LZ4_BLOCK: L.FLAG_COMPRESSION_LZ4,
            Compressor.GZIP: L.FLAG_COMPRESSION_GZIP,
            Compressor.ZSTD: L.FLAG_COMPRESSION_ZSTD,
        }[self.compressor]
        flags |= L.FLAG_HASH_BLAKE3 if self.digester is Digester.BLAKE3 else L.FLAG_HASH_SHA256
        return flags | (L.FLAG_EXPLICIT_UID_GID if self.explicit_uidgid else 0)


@dataclass
class ChunkDict:
    """Chunks of earlier images that a new image may point at instead of storing again."""

    blobs: list[BlobInfo] = field(default_factory=list)
    chunks: dict[tuple[bytes, int], ChunkInfo] = field(default_factory=dict)

    @classmethod
    def from_bootstraps(cls, boots: list[Bootstrap], digester: Digester) -> ChunkDict:
        found = cls()
        for boot in boots:
            if boot.digester is not digester:
                raise BuildError(
                    f"chunk dict uses {boot.digester.value}, build uses {digester.value}"
                )
            found._add(boot)
        return found

    def _add(self, boot: Bootstrap) -> None:
        place = {}
        for i, blob in enumerate(boot.blobs):
            ids = [b.blob_id for b in self.blobs]
            place[i] = ids.index(blob.blob_id) if blob.blob_id in ids else len(self.blobs)
            if blob.blob_id not in ids:
                self.blobs.append(blob)
        for inode in boot.inodes.values():
            for c in inode.chunks:
                key = (c.digest, c.uncompressed_size)
                self.chunks.setdefault(key, dataclasses.replace(c, blob_index=place[c.blob_index]))


class Layout:
    """Index order of a tree (§11.1): each directory's children get one block of indices."""

    def __init__(self, root: SourceEntry) -> None:
        self.nodes: list[SourceEntry] = [root]
        self.children: dict[int, tuple[int, int]] = {}  # index -> (first child, count)
        self.parent: dict[int, int] = {1: 0}
        stack = [1]
        while stack:
            index = stack.pop()
            kids = self.nodes[index - 1].sorted_children()
            first = len(self.nodes) + 1
            self.nodes.extend(kids)
            self.children[index] = (first, len(kids))
            for n in range(len(kids)):
                self.parent[first + n] = index
            stack.extend(first + n for n in reversed(range(len(kids))) if kids[n].is_dir)
        self.ino = self._hardlink_inos()

    def node(self, index: int) -> SourceEntry:
        return self.nodes[index - 1]

    def indices(self) -> range:
        return range(1, len(self.nodes) + 1)

    def _hardlink_inos(self) -> dict[int, int]:
        first: dict[object, int] = {}
        ino: dict[int, int] = {}
        for index in self.indices():
            key = self.node(index).link_key
            if key is None or not self.node(index).is_reg:
                ino[index] = index
            else:
                ino[index] = first.setdefault(key, index)
        return ino


@dataclass
class BuildResult:
    bootstrap: Bootstrap
    blob: BlobInfo | None  # the new blob, if any chunk was new
    stats: dict[str, int]


def build(
    root: SourceEntry,
    opts: BuildOptions,
    writer: BlobWriter,
    chunk_dict: ChunkDict | None = None,
) -> BuildResult:
    """Store remaining content through `writer` and lay out the bootstrap."""
    with gc_paused():
        return _build(root, opts, writer, chunk_dict)


@contextmanager
def gc_paused() -> Iterator[None]:
    """Hold off the cycle collector while a tree is read or built, then restore it.

    A build makes a few objects per inode and chunk, none in cycles; with the collector
    on, it walked that growing heap again and again: 40% of the main thread on /usr/share.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _build(
    root: SourceEntry, opts: BuildOptions, writer: BlobWriter, chunk_dict: ChunkDict | None
) -> BuildResult:
    layout = Layout(root)
    _store_content(layout, writer)
    new_blob = writer.finish()
    blobs, remap = _blob_table(layout, chunk_dict, new_blob)
    inodes = _inodes(layout, opts, remap)
    boot = Bootstrap(
        version=5,
        chunk_size=opts.chunk_size,
        flags=opts.flags | (L.FLAG_HAS_XATTR if any(i.xattrs for i in inodes.values()) else 0),
        compressor=opts.compressor,
        digester=opts.digester,
        blobs=blobs,
        inodes=inodes,
        prefetch=_prefetch(layout, opts.prefetch_files),
    )
    stats = {
        "inodes": len(inodes),
        "chunks_new": writer.chunk_count,
        "chunks_deduped": writer.reused_chunks,
        "bytes_deduped": writer.reused_bytes,
        "chunks_from_dict": writer.dict_chunks,
        "blob_compressed_size": writer.compressed_size,
        "blob_uncompressed_size": writer.uncompressed_size,
    }
    return BuildResult(boot, new_blob, stats)


def _store_content(layout: Layout, writer: BlobWriter) -> None:
    todo: list[tuple[int, Path, int]] = []
    for index in layout.indices():
        node = layout.node(index)
        if node.is_reg and node.chunks is None and layout.ino[index] == index:
            todo.append((index, _content_path(node), node.size))
    for index, chunks in writer.add_files(todo):
        layout.node(index).chunks = chunks
    for index in layout.indices():
        first = layout.ino[index]
        if first != index:
            layout.node(index).chunks = layout.node(first).chunks


def _content_path(node: SourceEntry) -> Path:
    if node.path is None:
        raise BuildError(f"regular file {node.name!r} has neither content nor chunks")
    return node.path


def _blob_table(
    layout: Layout, chunk_dict: ChunkDict | None, new_blob: BlobInfo | None
) -> tuple[list[BlobInfo], dict[int, int]]:
    """Dictionary blobs actually used (in dictionary order), then the new blob."""
    used = {c.blob_index for n in layout.nodes if n.chunks for c in n.chunks}
    dict_blobs = chunk_dict.blobs if chunk_dict else []
    blobs: list[BlobInfo] = []
    remap: dict[int, int] = {}
    for i, blob in enumerate(dict_blobs):
        if i in used:
            remap[i] = len(blobs)
            blobs.append(blob)
    if new_blob is not None:
        remap[NEW_BLOB] = len(blobs)
        blobs.append(new_blob)
    return blobs, remap


def _inodes(layout: Layout, opts: BuildOptions, remap: dict[int, int]) -> dict[int, Inode]:
    inodes: dict[int, Inode] = {}
    link_count: dict[int, int] = {}
    for index in layout.indices():
        link_count[layout.ino[index]] = link_count.get(layout.ino[index], 0) + 1
    for index in reversed(layout.indices()):  # children before parents: digests go up
        inodes[index] = _inode(layout, index, opts, remap, inodes, link_count)
    return dict(sorted(inodes.items()))


def _inode(
    layout: Layout,
    index: int,
    opts: BuildOptions,
    remap: dict[int, int],
    done: dict[int, Inode],
    link_count: dict[int, int],
) -> Inode:
    node = layout.node(index)
    first, count = layout.children[index] if node.is_dir else (0, 0)
    kids = [done[i] for i in range(first, first + count)]
    chunks = tuple(_placed(c, remap[c.blob_index]) for c in node.chunks or ())
    inode = Inode(
        index=index,
        ino=layout.ino[index],
        parent=layout.ino.get(layout.parent[index], 0),
        name=node.name,
        mode=node.mode,
        uid=node.uid if opts.explicit_uidgid else 0,
        gid=node.gid if opts.explicit_uidgid else 0,
        rdev=node.rdev,
        mtime=0 if index == 1 else node.mtime,
        mtime_nsec=0 if index == 1 else node.mtime_nsec,
        symlink=node.symlink if stat.S_ISLNK(node.mode) else None,
        xattrs=dict(sorted(node.xattrs.items())),
        chunks=chunks,
        children=tuple(range(first, first + count)),
        child_index=first if node.is_dir else 0,
    )
    _derive(inode, node, kids, link_count, opts.digester)
    return inode


def _placed(c: ChunkInfo, blob_index: int) -> ChunkInfo:
    """`c` in its final blob; built directly, as dataclasses.replace costs 3x more per chunk."""
    if c.blob_index == blob_index:
        return c
    return ChunkInfo(
        c.digest,
        blob_index,
        c.flags,
        c.compressed_size,
        c.uncompressed_size,
        c.compressed_offset,
        c.uncompressed_offset,
        c.file_offset,
        c.index,
        c.crc32,
    )


def _derive(
    inode: Inode, node: SourceEntry, kids: list[Inode], link_count: dict[int, int], h: Digester
) -> None:
    if inode.is_dir:
        names = sum(len(k.name) + 8 for k in kids)
        inode.size = max(4096, -(-names // 4096) * 4096)
        inode.nlink = 2 + sum(1 for k in kids if k.is_dir)
        inode.digest = h.hash(b"".join(k.digest for k in kids))
    elif inode.is_reg:
        inode.size = node.size
        inode.nlink = link_count[inode.ino]
        inode.digest = h.hash(b"".join(c.digest for c in inode.chunks))
    elif inode.is_symlink:
        inode.symlink = inode.symlink or b""
        if not inode.symlink:
            raise BuildError(f"symlink {node.name!r} has an empty target")
        inode.size = len(inode.symlink)
        inode.digest = h.hash(inode.symlink)
    else:
        inode.digest = h.hash(b"")
    xattr_bytes = sum(4 + len(k) + 1 + len(v) for k, v in inode.xattrs.items())
    inode.blocks = -(-(inode.size + L.align8(xattr_bytes)) // 512)


def _prefetch(layout: Layout, files: tuple[str, ...]) -> list[int]:
    by_path = {path: index for index, path in _paths(layout)}
    found: list[int] = []
    for name in files:
        key = "/" + name.strip("/") if name.strip("/") else "/"
        if key not in by_path:
            raise BuildError(f"prefetch file not in the image: {name}")
        found.append(layout.ino[by_path[key]])
    return found


def _paths(layout: Layout) -> list[tuple[int, str]]:
    paths = {1: "/"}
    for index in layout.indices():
        first, count = layout.children.get(index, (0, 0))
        base = paths[index].rstrip("/")
        for child in range(first, first + count):
            paths[child] = base + "/" + layout.node(child).name.decode(errors="surrogateescape")
    return sorted((i, p) for i, p in paths.items())


def writer_for(blob_dir: Path, opts: BuildOptions, chunk_dict: ChunkDict | None) -> BlobWriter:
    return BlobWriter(
        blob_dir,
        chunk_size=opts.chunk_size,
        compressor=opts.compressor,
        digester=opts.digester,
        known=chunk_dict.chunks if chunk_dict else None,
    )
