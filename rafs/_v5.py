"""Loading a RAFS v5 bootstrap: bytes in, a checked `Bootstrap` out.

Parsing and validating are separate steps: `parse_superblock` and `_read_record` only
unpack bytes within bounds, `_Validator` then checks the tree (ranges, names, parents,
cycles, chunk lists). Every failed check raises `CorruptBootstrap` naming the field and
the value found, so a forged file can neither crash nor hang the loader, and no count is
trusted before it was bounded by the file's length.
"""

from __future__ import annotations

import stat
from dataclasses import dataclass

from . import _v5layout as L
from ._digest import Compressor, Digester
from ._errors import CorruptBootstrap, UnsupportedFormat
from ._model import BlobInfo, Bootstrap, ChunkInfo, Inode


@dataclass(frozen=True, slots=True)
class Superblock:
    chunk_size: int
    flags: int
    inodes_count: int
    inode_table_offset: int
    prefetch_table_offset: int
    blob_table_offset: int
    inode_table_entries: int
    prefetch_table_entries: int
    blob_table_size: int
    ext_blob_entries: int
    ext_blob_offset: int

    @property
    def compressor(self) -> Compressor:
        return compressor_from_flags(self.flags)

    @property
    def digester(self) -> Digester:
        return digester_from_flags(self.flags)


def compressor_from_flags(flags: int) -> Compressor:
    """The first compression bit set wins; none set means lz4_block (§2)."""
    for bit, comp in (
        (L.FLAG_COMPRESSION_NONE, Compressor.NONE),
        (L.FLAG_COMPRESSION_LZ4, Compressor.LZ4_BLOCK),
        (L.FLAG_COMPRESSION_GZIP, Compressor.GZIP),
        (L.FLAG_COMPRESSION_ZSTD, Compressor.ZSTD),
    ):
        if flags & bit:
            return comp
    return Compressor.LZ4_BLOCK


def digester_from_flags(flags: int) -> Digester:
    """blake3 if its bit is set, else sha256 if its bit is set, else blake3 (§2)."""
    if flags & L.FLAG_HASH_BLAKE3:
        return Digester.BLAKE3
    if flags & L.FLAG_HASH_SHA256:
        return Digester.SHA256
    return Digester.BLAKE3


def is_v5(data: bytes) -> bool:
    return len(data) >= 8 and L.U32.unpack_from(data, 0)[0] == L.MAGIC


def load_v5(data: bytes) -> Bootstrap:
    """Parse and validate a whole v5 bootstrap."""
    sb = parse_superblock(data)
    table = _read_inode_table(data, sb)
    blobs = _read_blob_table(data, sb)
    prefetch = _read_prefetch_table(data, sb)
    inodes = _Validator(data, sb, table, len(blobs)).walk()
    return Bootstrap(
        version=5,
        chunk_size=sb.chunk_size,
        flags=sb.flags,
        compressor=sb.compressor,
        digester=sb.digester,
        blobs=blobs,
        inodes=inodes,
        prefetch=prefetch,
    )


# --- superblock and tables ------------------------------------------------------------


def parse_superblock(data: bytes) -> Superblock:
    size = len(data)
    if size < L.SUPERBLOCK_SIZE:
        raise CorruptBootstrap("file size", size)
    fields = L.SUPERBLOCK.unpack_from(data, 0)
    magic, version, sb_size, chunk_size, flags = fields[:5]
    if magic != L.MAGIC:
        raise CorruptBootstrap("s_magic", hex(magic), 0)
    if version != L.VERSION:
        raise UnsupportedFormat(f"RAFS version {version:#x} is not v5 (0x500)")
    if sb_size != L.SUPERBLOCK_SIZE:
        raise CorruptBootstrap("s_sb_size", sb_size, 8)
    _check_chunk_size(chunk_size)
    if flags & ~L.KNOWN_FLAGS:
        raise CorruptBootstrap("s_flags unknown bits", hex(flags & ~L.KNOWN_FLAGS), 16)
    if flags & L.FLAG_ENCRYPTION_AES128XTS:
        raise UnsupportedFormat("encrypted RAFS images are not supported")
    if size > L.MAX_BOOTSTRAP_SIZE or size % 8:
        raise CorruptBootstrap("file size", size)
    sb = Superblock(chunk_size, flags, *fields[5:])
    _check_table_bounds(sb, size)
    return sb


def _check_chunk_size(chunk_size: int) -> None:
    power_of_two = chunk_size & (chunk_size - 1) == 0
    if not (power_of_two and L.MIN_CHUNK_SIZE <= chunk_size <= L.MAX_CHUNK_SIZE):
        raise CorruptBootstrap("s_block_size (chunk size)", chunk_size, 12)


def _check_table_bounds(sb: Superblock, size: int) -> None:
    tables = (
        ("s_inode_table_offset", sb.inode_table_offset, sb.inode_table_entries * 4),
        ("s_prefetch_table_offset", sb.prefetch_table_offset, sb.prefetch_table_entries * 4),
        ("s_blob_table_offset", sb.blob_table_offset, sb.blob_table_size),
        ("s_extended_blob_table_offset", sb.ext_blob_offset, sb.ext_blob_entries * 64),
    )
    for name, offset, length in tables:
        if length == 0 and name != "s_inode_table_offset":
            continue
        if offset % 8 or offset < L.SUPERBLOCK_SIZE or offset + length > size:
            raise CorruptBootstrap(name, offset)
    if sb.inode_table_entries == 0:
        raise CorruptBootstrap("s_inode_table_entries", 0, 56)


def _read_u32_array(data: bytes, offset: int, count: int) -> list[int]:
    return [L.U32.unpack_from(data, offset + 4 * i)[0] for i in range(count)]


def _read_inode_table(data: bytes, sb: Superblock) -> list[int]:
    return _read_u32_array(data, sb.inode_table_offset, sb.inode_table_entries)


def _read_prefetch_table(data: bytes, sb: Superblock) -> list[int]:
    return _read_u32_array(data, sb.prefetch_table_offset, sb.prefetch_table_entries)


def _read_blob_table(data: bytes, sb: Superblock) -> list[BlobInfo]:
    raw = data[sb.blob_table_offset : sb.blob_table_offset + sb.blob_table_size]
    heads: list[tuple[int, int, str]] = []
    pos = 0
    while len(raw) - pos > L.BLOB_HEAD.size:
        ra_off, ra_size = L.BLOB_HEAD.unpack_from(raw, pos)
        end = raw.find(b"\0", pos + 8)
        end = len(raw) if end < 0 else end
        heads.append((ra_off, ra_size, _blob_id(raw[pos + 8 : end], sb.blob_table_offset + pos)))
        pos = end + 1
    return [_blob_info(data, sb, i, head) for i, head in enumerate(heads)]


def _blob_id(raw: bytes, offset: int) -> str:
    if not raw or not raw.isascii() or (not raw.isalnum() and not _is_id_text(raw)):
        raise CorruptBootstrap("blob id", raw[:80], offset)
    return raw.decode("ascii")


def _is_id_text(raw: bytes) -> bool:
    return all(chr(c).isalnum() or chr(c) in "-_.:" for c in raw)


def _blob_info(data: bytes, sb: Superblock, i: int, head: tuple[int, int, str]) -> BlobInfo:
    ra_off, ra_size, blob_id = head
    if i >= sb.ext_blob_entries:
        return BlobInfo(blob_id, readahead_offset=ra_off, readahead_size=ra_size)
    count, features, usize, csize, _ = L.EXT_BLOB.unpack_from(data, sb.ext_blob_offset + 64 * i)
    return BlobInfo(blob_id, count, usize, csize, features, ra_off, ra_size)


# --- inode records ---------------------------------------------------------------------


@dataclass(slots=True)
class _Record:
    inode: Inode
    child_index: int
    child_count: int


class _Validator:
    """Walks the tree from the root through child ranges, checking every record it meets."""

    def __init__(self, data: bytes, sb: Superblock, table: list[int], blob_count: int) -> None:
        self.data = data
        self.sb = sb
        self.table = table
        self.blob_count = blob_count
        self.inodes: dict[int, Inode] = {}

    def walk(self) -> dict[int, Inode]:
        root = self._record(1)
        self._check_root(root.inode)
        pending = [root]
        while pending:
            rec = pending.pop()
            if rec.inode.is_dir:
                pending.extend(self._children(rec))
        return dict(sorted(self.inodes.items()))

    def _check_root(self, root: Inode) -> None:
        if root.name != b"/" or root.ino != 1:
            raise CorruptBootstrap("root name/ino", (root.name, root.ino))

    def _children(self, rec: _Record) -> list[_Record]:
        parent, first, count = rec.inode, rec.child_index, rec.child_count
        parent.child_index = first
        if count == 0:
            return []
        last = first + count - 1
        if first <= parent.index or last > len(self.table):
            raise CorruptBootstrap(f"i_child_index/count of index {parent.index}", (first, count))
        children = [self._record(i) for i in range(first, last + 1)]
        self._check_siblings(parent, [c.inode for c in children])
        parent.children = tuple(range(first, last + 1))
        return children

    def _check_siblings(self, parent: Inode, children: list[Inode]) -> None:
        previous = b""
        for child in children:
            if child.parent != parent.ino:
                raise CorruptBootstrap(f"i_parent of index {child.index}", child.parent)
            if child.name <= previous:
                raise CorruptBootstrap(f"child order under index {parent.index}", child.name)
            previous = child.name

    def _record(self, index: int) -> _Record:
        if index in self.inodes:
            raise CorruptBootstrap("inode index reached twice (cycle or shared child)", index)
        slot = self.table[index - 1]
        offset = slot << 3
        if slot <= 1024 or offset + L.INODE.size > len(self.data):
            raise CorruptBootstrap(f"inode table entry {index}", slot)
        rec = _RecordReader(self.data, offset, self.sb, self.blob_count).read(index)
        if rec.inode.ino == 0 or rec.inode.ino > len(self.table) or rec.inode.nlink == 0:
            raise CorruptBootstrap(
                f"i_ino/i_nlink of index {index}", (rec.inode.ino, rec.inode.nlink)
            )
        self.inodes[index] = rec.inode
        return rec


class _RecordReader:
    """Unpacks one inode record at `offset`, keeping every read inside the file."""

    def __init__(self, data: bytes, offset: int, sb: Superblock, blob_count: int) -> None:
        self.data = data
        self.pos = offset
        self.sb = sb
        self.blob_count = blob_count

    def take(self, length: int, what: str) -> bytes:
        end = self.pos + length
        if end > len(self.data):
            raise CorruptBootstrap(f"{what} runs past the end of the file", length, self.pos)
        chunk = self.data[self.pos : end]
        self.pos = L.align8(end)
        return chunk

    def read(self, index: int) -> _Record:
        start = self.pos
        h = L.INODE.unpack(self.take(L.INODE.size, "inode header"))
        (
            digest,
            parent,
            ino,
            uid,
            gid,
            _projid,
            mode,
            size,
            blocks,
            flags,
            nlink,
            child_index,
            child_count,
            name_size,
            symlink_size,
            rdev,
            mtime_nsec,
            mtime,
            _,
        ) = h
        if index == 1 and not stat.S_ISDIR(mode):
            raise UnsupportedFormat(
                f"root inode mode {mode:#o} is not a directory: not a RAFS v5 inode "
                "layout (a pre-release Nydus bootstrap?)"
            )
        if flags & ~L.KNOWN_INODE_FLAGS:
            raise CorruptBootstrap(f"i_flags of index {index}", hex(flags), start)
        name = self._name(name_size, index)
        inode = Inode(
            index=index,
            ino=ino,
            parent=parent,
            name=name,
            mode=mode,
            uid=uid,
            gid=gid,
            size=size,
            blocks=blocks,
            nlink=nlink,
            rdev=rdev,
            mtime=mtime,
            mtime_nsec=mtime_nsec,
            flags=flags,
            digest=digest,
        )
        if symlink_size:
            inode.symlink = self.take(symlink_size, "symlink target")
        elif stat.S_ISLNK(mode):
            raise CorruptBootstrap(f"i_symlink_size of symlink index {index}", 0, start)
        if flags & L.INODE_XATTR:
            inode.xattrs = self._xattrs(index)
        if stat.S_ISREG(mode):
            inode.chunks = self._chunks(child_count, index, size, flags)
        return _Record(inode, child_index, child_count if stat.S_ISDIR(mode) else 0)

    def _name(self, size: int, index: int) -> bytes:
        if not 1 <= size <= L.NAME_MAX + 1:
            raise CorruptBootstrap(f"i_name_size of index {index}", size, self.pos)
        name = self.take(size, "name")
        bad_root = index == 1 and name != b"/"
        bad_child = index != 1 and (b"/" in name or b"\0" in name or name in (b".", b".."))
        if bad_root or bad_child:
            raise CorruptBootstrap(f"name of index {index}", name)
        return name

    def _xattrs(self, index: int) -> dict[bytes, bytes]:
        (total,) = L.U64.unpack(self.take(8, "xattr size"))
        if total > len(self.data):
            raise CorruptBootstrap(f"xattr block size of index {index}", total, self.pos)
        return parse_xattr_pairs(self.take(total, "xattr block"), index)

    def _chunks(self, count: int, index: int, size: int, flags: int) -> tuple[ChunkInfo, ...]:
        expected = -(-size // self.sb.chunk_size)
        if not flags & L.INODE_HAS_HOLE and count != expected:
            raise CorruptBootstrap(f"chunk count of index {index} (size {size})", count)
        raw = self.take(count * L.CHUNK.size, "chunk records")
        chunks = tuple(ChunkInfo(*L.CHUNK.unpack_from(raw, i * 80)) for i in range(count))
        for n, chunk in enumerate(chunks):
            self._check_chunk(chunk, n, index, flags)
        return chunks

    def _check_chunk(self, chunk: ChunkInfo, n: int, index: int, flags: int) -> None:
        where = f"chunk {n} of index {index}"
        if chunk.blob_index >= self.blob_count:
            raise CorruptBootstrap(f"blob_index of {where}", chunk.blob_index)
        if not 0 < chunk.uncompressed_size <= self.sb.chunk_size:
            raise CorruptBootstrap(f"uncompressed_size of {where}", chunk.uncompressed_size)
        if not flags & L.INODE_HAS_HOLE and chunk.file_offset != n * self.sb.chunk_size:
            raise CorruptBootstrap(f"file_offset of {where}", chunk.file_offset)


def parse_xattr_pairs(block: bytes, index: int) -> dict[bytes, bytes]:
    """Pairs of (u32 length, name NUL value) until the block is used up (§8)."""
    pairs: dict[bytes, bytes] = {}
    pos = 0
    while pos < len(block):
        if pos + 4 > len(block):
            raise CorruptBootstrap(f"xattr pair header of index {index}", pos)
        (length,) = L.U32.unpack_from(block, pos)
        pair = block[pos + 4 : pos + 4 + length]
        if len(pair) != length or b"\0" not in pair:
            raise CorruptBootstrap(f"xattr pair of index {index}", length)
        name, _, value = pair.partition(b"\0")
        pairs[name] = value
        pos += 4 + length
    return pairs
