"""Turning a `SourceEntry` tree into a RAFS v5 image: indices, chunks, digests, tables.

The steps follow the Nydus builder so that the same tree gives the same bootstrap:
indices are given a directory's children as one block before any grandchild (§11.1 of
the format notes); file content is stored in index order; digests are computed from the
leaves up; directory sizes, block counts and link counts are derived, never copied.
"""

from __future__ import annotations

import collections
import gc
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from stat import S_ISDIR, S_ISLNK, S_ISREG

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
                self.chunks.setdefault(key, c.placed(place[c.blob_index], c.file_offset))


ListChildren = Callable[[SourceEntry], list[SourceEntry]]  # a directory's entries, by name


class Layout:
    """Index order of a tree (§11.1): each directory's children get one block of indices.

    The tree is listed as the indices are given (`grow`), one directory at a time, so a
    source read from disk can be walked while the content of what was found is stored.
    """

    def __init__(
        self, root: SourceEntry, list_children: ListChildren = SourceEntry.sorted_children
    ) -> None:
        self.nodes: list[SourceEntry] = [root]
        self.children: dict[int, tuple[int, int]] = {}  # index -> (first child, count)
        self.parent: dict[int, int] = {1: 0}
        self.ino: dict[int, int] = {1: 1}  # index -> index of the first of its hardlinks
        self._list_children = list_children
        self._grown = False

    def grow(self) -> Iterator[tuple[int, SourceEntry]]:
        """List the whole tree; yield each (index, entry) below the root as it is given."""
        if self._grown:
            raise RuntimeError("layout already grown")
        self._grown = True
        nodes, children, parent, ino = self.nodes, self.children, self.parent, self.ino
        first_link: dict[object, int] = {}
        stack = [1]
        while stack:
            index = stack.pop()
            kids = self._list_children(nodes[index - 1])
            first = len(nodes) + 1
            nodes.extend(kids)
            children[index] = (first, len(kids))
            dirs = []
            for n, kid in enumerate(kids, first):
                parent[n] = index
                key = kid.link_key
                ino[n] = n if key is None or not kid.is_reg else first_link.setdefault(key, n)
                if kid.is_dir:
                    dirs.append(n)
                yield n, kid
            stack.extend(reversed(dirs))

    def node(self, index: int) -> SourceEntry:
        return self.nodes[index - 1]

    def indices(self) -> range:
        return range(1, len(self.nodes) + 1)


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
    list_children: ListChildren = SourceEntry.sorted_children,
) -> BuildResult:
    """Store remaining content through `writer` and lay out the bootstrap.

    The tree below `root` is listed by `list_children` as it is laid out; by default it
    is the tree already in `root.children`.
    """
    with gc_paused():
        return _build(Layout(root, list_children), opts, writer, chunk_dict)


@contextmanager
def gc_paused() -> Iterator[None]:
    """Hold off the cycle collector while a tree is read or built, then restore it.

    A build makes a few objects per inode and chunk, none in cycles; with the collector
    on, it walked that growing heap again and again: 40% of the main thread on /usr/share.
    Afterwards the objects made meanwhile are moved to the oldest generation (freeze,
    then unfreeze), or the first young collection would walk every one of them once more.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.freeze()
            gc.unfreeze()
            gc.enable()


def _build(
    layout: Layout, opts: BuildOptions, writer: BlobWriter, chunk_dict: ChunkDict | None
) -> BuildResult:
    table = _InodeTable(layout, opts)
    _store_content(layout, writer, table)
    new_blob = writer.finish()
    blobs, remap = _blob_table(layout, chunk_dict, writer, new_blob)
    inodes = table.finish(remap)
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


def _store_content(layout: Layout, writer: BlobWriter, table: _InodeTable) -> None:
    """Grow the layout and store the content it finds, in index order, as it is found;
    make the inode of each file stored, while the pipeline works on the next ones."""
    todo = (
        (index, _content_path(node), node.size)
        for index, node in layout.grow()
        if node.chunks is None and node.is_reg and layout.ino[index] == index
    )
    for index, chunks in writer.add_files(todo):
        node = layout.node(index)
        node.chunks = chunks
        if node.link_key is None:
            table.add_file(index)
    for index in layout.indices():
        first = layout.ino[index]
        if first != index:
            layout.node(index).chunks = layout.node(first).chunks


def _content_path(node: SourceEntry) -> bytes:
    if node.path is None:
        raise BuildError(f"regular file {node.name!r} has neither content nor chunks")
    return node.path


def _blob_table(
    layout: Layout, chunk_dict: ChunkDict | None, writer: BlobWriter, new_blob: BlobInfo | None
) -> tuple[list[BlobInfo], dict[int, int]]:
    """Dictionary blobs actually used (in dictionary order), then the new blob."""
    dict_blobs = chunk_dict.blobs if chunk_dict else []
    used = _blobs_used(layout) if dict_blobs else set()
    blobs: list[BlobInfo] = []
    remap: dict[int, int] = {}
    for i, blob in enumerate(dict_blobs):
        if i in used:
            remap[i] = len(blobs)
            blobs.append(blob)
    if new_blob is not None:
        if writer.blob_index in remap:
            raise BuildError(
                f"new chunks were given blob index {writer.blob_index}, a dictionary blob's:"
                " the writer must be made by writer_for with the same chunk dictionary"
            )
        remap[writer.blob_index] = len(blobs)
        blobs.append(new_blob)
    return blobs, remap


def _blobs_used(layout: Layout) -> set[int]:
    return {c.blob_index for n in layout.nodes if n.chunks for c in n.chunks}


class _InodeTable:
    """The inodes of a layout, each made as soon as what it depends on is known.

    A regular file with one link can be made as soon as its chunks are stored, while
    the walk and the content pipeline go on; the rest (directories need their children,
    hardlinks their link count) are made by `finish`, children before parents (digests
    go up). If the blob table moves any chunk to another blob index, files made early
    carry the old index and are made again.
    """

    def __init__(self, layout: Layout, opts: BuildOptions) -> None:
        self.layout = layout
        self.explicit_uidgid = opts.explicit_uidgid
        self.digest_of = opts.digester.function()
        self.done: dict[int, Inode] = {}

    def add_file(self, index: int) -> None:
        """Make the inode of a regular file that has its chunks and no other link."""
        self.done[index] = self._make(index, 1, None)

    def finish(self, remap: dict[int, int]) -> dict[int, Inode]:
        layout, done = self.layout, self.done
        moved = any(old != new for old, new in remap.items())
        if moved:
            done.clear()
        link_count = collections.Counter(layout.ino.values())
        for index in range(len(layout.nodes), 0, -1):
            if index not in done:
                nlink = link_count[layout.ino[index]]
                done[index] = self._make(index, nlink, remap if moved else None)
        return {index: done[index] for index in layout.indices()}

    def _make(self, index: int, file_nlink: int, remap: dict[int, int] | None) -> Inode:
        """One inode (it runs once per entry: written for speed)."""
        layout, digest_of = self.layout, self.digest_of
        node = layout.nodes[index - 1]
        mode = node.mode
        first, count = layout.children[index] if S_ISDIR(mode) else (0, 0)
        chunks = node.chunks or ()
        if remap is not None:
            chunks = tuple(c.placed(remap[c.blob_index], c.file_offset) for c in chunks)
        if S_ISDIR(mode):
            kids = [self.done[i] for i in range(first, first + count)]
            size, nlink, digest = _dir_fields(kids, digest_of)
        elif S_ISREG(mode):
            size, nlink = node.size, file_nlink
            digest = digest_of(b"".join([c.digest for c in chunks]))
        elif S_ISLNK(mode):
            if not node.symlink:
                raise BuildError(f"symlink {node.name!r} has an empty target")
            size, nlink, digest = len(node.symlink), 1, digest_of(node.symlink)
        else:
            size, nlink, digest = 0, 1, digest_of(b"")
        xattrs = dict(sorted(node.xattrs.items())) if node.xattrs else {}
        xattr_bytes = sum(4 + len(k) + 1 + len(v) for k, v in xattrs.items()) if xattrs else 0
        return Inode(
            index,
            layout.ino[index],
            layout.ino.get(layout.parent[index], 0),
            node.name,
            mode,
            node.uid if self.explicit_uidgid else 0,
            node.gid if self.explicit_uidgid else 0,
            size,
            -(-(size + L.align8(xattr_bytes)) // 512),  # blocks
            nlink,
            node.rdev,
            0 if index == 1 else node.mtime,
            0 if index == 1 else node.mtime_nsec,
            0,  # flags
            digest,
            node.symlink if S_ISLNK(mode) else None,
            xattrs,
            chunks,
            tuple(range(first, first + count)),
            first,  # child_index: 0 for all but directories
        )


def _dir_fields(kids: list[Inode], digest_of: Callable[[bytes], bytes]) -> tuple[int, int, bytes]:
    """A directory's size (its dirents, in 4 KiB blocks), link count and digest."""
    names = sum([len(k.name) for k in kids]) + 8 * len(kids)
    size = max(4096, -(-names // 4096) * 4096)
    nlink = 2 + sum([1 for k in kids if S_ISDIR(k.mode)])
    return size, nlink, digest_of(b"".join([k.digest for k in kids]))


def _prefetch(layout: Layout, files: tuple[str, ...]) -> list[int]:
    if not files:
        return []
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
        # Without dictionary blobs the new blob is the image's first: its chunks are
        # placed there from the start and need no second record made for them.
        blob_index=NEW_BLOB if chunk_dict and chunk_dict.blobs else 0,
    )
