"""Writing a RAFS v5 bootstrap: a `Bootstrap` in, the bytes of the file out.

Tables are laid out as the current Nydus builder does (superblock, inode table, prefetch
table, blob table, extended blob table, then the inode records in index order), each
8-aligned, so nydusd's sequential and direct loaders both accept the file.
"""

from __future__ import annotations

from stat import S_ISDIR, S_ISLNK, S_ISREG

from . import _v5layout as L
from ._model import Bootstrap, ChunkInfo, Inode


def dump_v5(boot: Bootstrap) -> bytes:
    count = len(boot.inodes)
    blob_table = _blob_table(boot)
    inode_table_off = L.SUPERBLOCK_SIZE
    prefetch_off = inode_table_off + L.align8(4 * count)
    blob_off = prefetch_off + L.align8(4 * len(boot.prefetch))
    ext_off = blob_off + len(blob_table)
    records_off = ext_off + 64 * len(boot.blobs)
    records, offsets = _records(boot, records_off)
    superblock = L.SUPERBLOCK.pack(
        L.MAGIC,
        L.VERSION,
        L.SUPERBLOCK_SIZE,
        boot.chunk_size,
        boot.flags,
        _inodes_count(boot),
        inode_table_off,
        prefetch_off,
        blob_off,
        count,
        len(boot.prefetch),
        len(blob_table),
        len(boot.blobs),
        ext_off if boot.blobs else 0,
    )
    parts = [
        L.pad_to(superblock, L.SUPERBLOCK_SIZE),
        L.pad8(b"".join(L.U32.pack(off >> 3) for off in offsets)),
        L.pad8(b"".join(L.U32.pack(ino) for ino in boot.prefetch)),
        blob_table,
        b"".join(_ext_blob(boot, i) for i in range(len(boot.blobs))),
        records,
    ]
    return b"".join(parts)


def _inodes_count(boot: Bootstrap) -> int:
    """Root, every non-regular entry, one per distinct regular inode (§11.3)."""
    return len({(i.ino if S_ISREG(i.mode) else -i.index) for i in boot.inodes.values()})


def _blob_table(boot: Bootstrap) -> bytes:
    entries = [
        L.BLOB_HEAD.pack(b.readahead_offset, b.readahead_size) + b.blob_id.encode()
        for b in boot.blobs
    ]
    return L.pad8(b"\0".join(entries))


def _ext_blob(boot: Bootstrap, i: int) -> bytes:
    b = boot.blobs[i]
    return L.EXT_BLOB.pack(b.chunk_count, b.features, b.uncompressed_size, b.compressed_size, b"")


def _records(boot: Bootstrap, start: int) -> tuple[bytes, list[int]]:
    parts: list[bytes] = []
    offsets: list[int] = []
    pos = start
    for index in range(1, len(boot.inodes) + 1):
        record = encode_inode(boot.inodes[index])
        offsets.append(pos)
        parts.append(record)
        pos += len(record)
    return b"".join(parts), offsets


def encode_inode(inode: Inode) -> bytes:
    """One inode record; it runs once per entry of an image, so it is written for speed."""
    mode = inode.mode
    name = inode.name
    symlink = inode.symlink or b""
    flags = inode.flags | (L.INODE_XATTR if inode.xattrs else 0)
    if S_ISDIR(mode):
        child_index = inode.children[0] if inode.children else inode.child_index
        child_count = len(inode.children)
    else:
        child_index, child_count = 0, len(inode.chunks) if S_ISREG(mode) else 0
        flags |= L.INODE_SYMLINK if S_ISLNK(mode) else 0
    header = _pack_inode(
        inode.digest,
        inode.parent,
        inode.ino,
        inode.uid,
        inode.gid,
        0,
        mode,
        inode.size,
        inode.blocks,
        flags,
        inode.nlink,
        child_index,
        child_count,
        len(name),
        len(symlink),
        inode.rdev & 0xFFFFFFFF,
        inode.mtime_nsec,
        inode.mtime,
        b"",
    )
    parts = [header, name, _ZEROS[-len(name) & 7], symlink, _ZEROS[-len(symlink) & 7]]
    if inode.xattrs:
        pairs = encode_xattr_pairs(inode.xattrs)
        parts += [L.U64.pack(len(pairs)), L.pad8(pairs)]
    parts += [_chunk(c) for c in inode.chunks]
    return b"".join(parts)


_pack_inode = L.INODE.pack
_ZEROS = [b"\0" * n for n in range(8)]  # padding to the next multiple of 8, by its length


def _chunk(c: ChunkInfo) -> bytes:
    return L.CHUNK.pack(
        c.digest,
        c.blob_index,
        c.flags,
        c.compressed_size,
        c.uncompressed_size,
        c.compressed_offset,
        c.uncompressed_offset,
        c.file_offset,
        c.index,
        c.crc32,
    )


def encode_xattr_pairs(xattrs: dict[bytes, bytes]) -> bytes:
    """Pairs sorted by name, so the same xattrs always give the same bytes (§8)."""
    out = []
    for name in sorted(xattrs):
        pair = name + b"\0" + xattrs[name]
        out.append(L.U32.pack(len(pair)) + pair)
    return b"".join(out)
