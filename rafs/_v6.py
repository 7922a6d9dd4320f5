"""RAFS v6 bootstraps: read a Nydus EROFS-compatible bootstrap into the in-memory model.

Field meanings follow ../shared/formats/rafs-v6.md (section numbers in the comments); the
80-byte chunk record and the flag bits are those of rafs-v5.md. Every on-disk record is one
little-endian `struct.Struct` declared below. Records are first loaded into plain tuples,
then checked; a failed check raises `CorruptBootstrap` naming the field and the value found,
and a well-formed image using a feature this reader lacks raises `UnsupportedFormat`. No
count is trusted before the bytes it promises are known to exist, and each directory is
visited once, so a forged bootstrap can neither hang the loader nor exhaust memory.
"""

from __future__ import annotations

import dataclasses
import itertools
import stat
import struct
from dataclasses import dataclass, field
from typing import Any, Final, NamedTuple

from ._digest import Compressor, Digester
from ._errors import CorruptBootstrap, UnsupportedFormat
from ._model import (
    CHUNK_BATCH,
    CHUNK_COMPRESSED,
    CHUNK_ENCRYPTED,
    CHUNK_HAS_CRC32,
    CHUNK_HOLE,
    BlobInfo,
    Bootstrap,
    ChunkInfo,
    Inode,
)
from ._v5layout import (
    CHUNK,
    FLAG_COMPRESSION_GZIP,
    FLAG_COMPRESSION_LZ4,
    FLAG_COMPRESSION_NONE,
    FLAG_COMPRESSION_ZSTD,
    FLAG_ENCRYPTION_AES128XTS,
    FLAG_HASH_BLAKE3,
    FLAG_HASH_SHA256,
    FLAG_TARTFS_MODE,
)
from ._v5layout import KNOWN_FLAGS as _KNOWN_FLAGS

# --- constants ----------------------------------------------------------------------

BLOCK_SIZE: Final = 4096  # the EROFS block (§0); 512 only in tarfs mode
_BLOCK_BITS: Final = 12
EROFS_SUPER_OFFSET: Final = 1024  # §1: after the boot area
EROFS_MAGIC: Final = 0xE0F5E1E2
_RAFS_SUPER_OFFSET: Final = 1152
_FEATURE_COMPAT_RAFS_V6: Final = 0x4000_0000  # §2 s_feature_compat
_FEATURE_INCOMPAT_RAFS: Final = 0x0C  # CHUNKED_FILE | DEVICE_TABLE, exactly
_DEVT_SLOTOFF: Final = 11  # device table at 11 x 128 = 1408
_NID_UNIT: Final = 32  # §7: inode_offset = meta base + 32 x nid
_MIN_CHUNK_SIZE: Final = 0x1000
_MAX_CHUNK_SIZE: Final = 0x100_0000
_MAX_BLOB_CHUNKS: Final = 1 << 24  # §10.2: 24-bit CI index
_NAME_MAX: Final = 255

# §3 s_flags (the v5 s_flags bits, rafs-v5.md §2)
_FLAG_COMPRESSORS: Final = {
    FLAG_COMPRESSION_NONE: Compressor.NONE,
    FLAG_COMPRESSION_LZ4: Compressor.LZ4_BLOCK,
    FLAG_COMPRESSION_GZIP: Compressor.GZIP,
    FLAG_COMPRESSION_ZSTD: Compressor.ZSTD,
}
_FLAG_DIGESTERS: Final = {FLAG_HASH_BLAKE3: Digester.BLAKE3, FLAG_HASH_SHA256: Digester.SHA256}

# §5 blob record codes
_BLOB_COMPRESSORS: Final = (Compressor.NONE, Compressor.LZ4_BLOCK, Compressor.GZIP, Compressor.ZSTD)
_BLOB_DIGESTERS: Final = (Digester.BLAKE3, Digester.SHA256)
_MAX_CIPHER_ALGO: Final = 3  # 1 aes128-xts, 2 aes256-xts, 3 aes256-gcm

# blob feature bits (rafs-v5.md §6)
BLOB_ALIGNED: Final = 0x0000_0001
_BLOB_INCOMPAT_RESERVED: Final = 0x0000_F000
_BLOB_UNSUPPORTED: Final = {
    0x0000_0008: "zran",
    0x0000_0040: "tarfs",
    0x0000_0080: "batch",
    0x0000_0100: "encrypted",
    0x0000_0800: "external",
}
_BLOB_ID_CHARS: Final = frozenset(
    b"0123456789abcdefABCDEFGHIJKLMNOPQRSTUVWXYZghijklmnopqrstuvwxyz._-"
)

# §8 i_format: bit 0 version, bits 1..3 data layout
_I_FORMAT_KNOWN: Final = 0xF
LAYOUT_FLAT_PLAIN: Final = 0
LAYOUT_FLAT_INLINE: Final = 2
LAYOUT_CHUNK_BASED: Final = 4
_LAYOUTS_COMPRESSED: Final = frozenset({1, 3})
_LAYOUTS_FLAT: Final = frozenset({LAYOUT_FLAT_PLAIN, LAYOUT_FLAT_INLINE})

# §10.1 chunk format word
_CHUNK_FORMAT_INDEXES: Final = 0x20
_CHUNK_FORMAT_BLKBITS: Final = 0x1F

# §9 dirent file types
_FILE_TYPES: Final = {
    1: stat.S_IFREG,
    2: stat.S_IFDIR,
    3: stat.S_IFCHR,
    4: stat.S_IFBLK,
    5: stat.S_IFIFO,
    6: stat.S_IFSOCK,
    7: stat.S_IFLNK,
}
_DOT: Final = b"."
_DOTDOT: Final = b".."

# §13 xattr name indexes; the two ACL names carry no suffix
_XATTR_PREFIXES: Final = {
    1: b"user.",
    2: b"system.posix_acl_access",
    3: b"system.posix_acl_default",
    4: b"trusted.",
    6: b"security.",
}
_XATTR_WHOLE_NAMES: Final = frozenset({2, 3})

# The model's Inode.flags carries the v5 i_flags bits (rafs-v5.md §7.2); set them alike.
_INODE_SYMLINK: Final = 0x1
_INODE_XATTR: Final = 0x4

_KNOWN_CHUNK_FLAGS: Final = (
    CHUNK_COMPRESSED | CHUNK_HOLE | CHUNK_ENCRYPTED | CHUNK_BATCH | CHUNK_HAS_CRC32
)
_UNSUPPORTED_CHUNK_FLAGS: Final = CHUNK_HOLE | CHUNK_ENCRYPTED | CHUNK_BATCH

# --- records --------------------------------------------------------------------------

# §2 EROFS superblock at offset 1024.
_EROFS_SUPER = struct.Struct(
    "<"
    "I"  # s_magic: EROFS_MAGIC
    "I"  # s_checksum: 0, no crc
    "I"  # s_feature_compat: must hold RAFS_V6
    "B"  # s_blkszbits: 12
    "B"  # s_extslots: 0
    "H"  # s_root_nid: nid of the root directory
    "Q"  # s_inos: number of tree entries, non-zero
    "Q"  # s_build_time: 0
    "I"  # s_build_time_nsec: 0
    "I"  # s_blocks: data blocks of all blobs (informational)
    "I"  # s_meta_blkaddr: block of nid 0
    "I"  # s_xattr_blkaddr: 0, no shared xattrs
    "16s"  # s_uuid: zero
    "16s"  # s_volume_name: zero
    "I"  # s_feature_incompat: exactly CHUNKED_FILE | DEVICE_TABLE
    "H"  # s_u: 0
    "H"  # s_extra_devices: device slots = blobs
    "H"  # s_devt_slotoff: device table offset / 128
    "38s"  # reserved
)
assert _EROFS_SUPER.size == 128

# §3 RAFS v6 extended superblock at offset 1152.
_RAFS_SUPER = struct.Struct(
    "<"
    "Q"  # s_flags: FLAG_* bits
    "Q"  # s_blob_table_offset: 4 KiB aligned
    "I"  # s_blob_table_size: bytes, multiple of 256
    "I"  # s_chunk_size: power of two in [4 KiB, 16 MiB]
    "Q"  # s_chunk_table_offset: 4 KiB aligned
    "Q"  # s_chunk_table_size: bytes, multiple of 80
    "Q"  # s_prefetch_table_offset: 0 when absent
    "I"  # s_prefetch_table_size: bytes (entries x 4)
    "I"  # s_padding
    "200s"  # reserved
)
assert _RAFS_SUPER.size == 256

# §4 device table slot, one per blob.
_DEVICE_SLOT = struct.Struct(
    "<"
    "64s"  # blob_id: ASCII, NUL-padded
    "I"  # blocks: uncompressed blob size / 4 KiB, non-zero
    "I"  # mapped_blkaddr: start in the flat block address space
    "56s"  # reserved
)
assert _DEVICE_SLOT.size == 128

# §5 blob table record.
_BLOB_RECORD = struct.Struct(
    "<"
    "64s"  # blob_id: ASCII, NUL-padded
    "I"  # blob_index: the record's position
    "I"  # chunk_size: s_chunk_size
    "I"  # chunk_count: chunks stored in the blob, <= 2^24
    "I"  # compression_algo: 0 none, 1 lz4_block, 2 gzip, 3 zstd
    "I"  # digest_algo: 0 blake3, 1 sha256
    "I"  # features: blob feature bits
    "Q"  # compressed_size: the whole blob file
    "Q"  # uncompressed_size: the uncompressed address space
    "I"  # blob_toc_size
    "I"  # ci_compressor
    "Q"  # ci_offset
    "Q"  # ci_compressed_size
    "Q"  # ci_uncompressed_size
    "32s"  # blob_toc_digest: sha256
    "32s"  # blob_meta_digest
    "Q"  # blob_meta_size
    "8s"  # cipher_iv
    "I"  # cipher_algo: 0 none
    "36s"  # reserved
)
assert _BLOB_RECORD.size == 256

# §8.2 compact inode.
_INODE_COMPACT = struct.Struct(
    "<"
    "H"  # i_format: bit 0 clear
    "H"  # i_xattr_icount: xattr area size code
    "H"  # i_mode
    "H"  # i_nlink
    "I"  # i_size
    "I"  # reserved
    "I"  # i_u: §8.3
    "I"  # i_ino: RAFS index (not used)
    "H"  # i_uid
    "H"  # i_gid
    "4s"  # reserved
)
assert _INODE_COMPACT.size == 32

# §8.1 extended inode.
_INODE_EXTENDED = struct.Struct(
    "<"
    "H"  # i_format: bit 0 set
    "H"  # i_xattr_icount: xattr area size code
    "H"  # i_mode
    "H"  # reserved
    "Q"  # i_size
    "I"  # i_u: §8.3
    "I"  # i_ino: RAFS index (not used)
    "I"  # i_uid
    "I"  # i_gid
    "Q"  # i_mtime: seconds
    "I"  # i_mtime_nsec
    "I"  # i_nlink
    "16s"  # reserved
)
assert _INODE_EXTENDED.size == 64

# §9 directory entry.
_DIRENT = struct.Struct(
    "<"
    "Q"  # e_nid: nid of the target inode
    "H"  # e_nameoff: offset of the name within the block
    "B"  # e_file_type: 0 unknown, 1..7 see _FILE_TYPES
    "B"  # reserved
)
assert _DIRENT.size == 12

# §10.2 chunk index entry.
_CHUNK_ADDR = struct.Struct(
    "<"
    "H"  # c_blob_addr_lo: CI index bits 0..15
    "H"  # c_blob_addr_hi: bits 0..7 blob index + 1, bits 8..15 CI index bits 16..23
    "I"  # c_blk_addr: uncompressed offset in the blob / 4 KiB
)
assert _CHUNK_ADDR.size == 8

# §11 bootstrap chunk table record (the v5 chunk record, rafs-v5.md §9); the fields are in
# ChunkInfo's order.
_CHUNK_RECORD = CHUNK  # §11: the v5 chunk record, 80 bytes

# §13 inline xattr area header and entry head.
_XATTR_HEADER = struct.Struct(
    "<"
    "I"  # h_name_filter: not used
    "B"  # h_shared_count: 0, no shared xattrs
    "7s"  # reserved
)
assert _XATTR_HEADER.size == 12
_XATTR_ENTRY = struct.Struct(
    "<"
    "B"  # e_name_len: suffix length
    "B"  # e_name_index: _XATTR_PREFIXES
    "H"  # e_value_size
)
assert _XATTR_ENTRY.size == 4

_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")  # also a §6 prefetch table entry: a nid


class _ErofsSuper(NamedTuple):
    magic: int
    checksum: int
    feature_compat: int
    blkszbits: int
    extslots: int
    root_nid: int
    inos: int
    build_time: int
    build_time_nsec: int
    blocks: int
    meta_blkaddr: int
    xattr_blkaddr: int
    uuid: bytes
    volume_name: bytes
    feature_incompat: int
    u: int
    extra_devices: int
    devt_slotoff: int
    reserved: bytes

    @property
    def device_table_end(self) -> int:
        return _DEVT_SLOTOFF * _DEVICE_SLOT.size + self.extra_devices * _DEVICE_SLOT.size


class _RafsSuper(NamedTuple):
    flags: int
    blob_table_offset: int
    blob_table_size: int
    chunk_size: int
    chunk_table_offset: int
    chunk_table_size: int
    prefetch_table_offset: int
    prefetch_table_size: int
    padding: int
    reserved: bytes


class _DeviceSlot(NamedTuple):
    blob_id: bytes
    blocks: int
    mapped_blkaddr: int
    reserved: bytes


class _BlobRecord(NamedTuple):
    blob_id: bytes
    blob_index: int
    chunk_size: int
    chunk_count: int
    compression_algo: int
    digest_algo: int
    features: int
    compressed_size: int
    uncompressed_size: int
    blob_toc_size: int
    ci_compressor: int
    ci_offset: int
    ci_compressed_size: int
    ci_uncompressed_size: int
    blob_toc_digest: bytes
    blob_meta_digest: bytes
    blob_meta_size: int
    cipher_iv: bytes
    cipher_algo: int
    reserved: bytes


class _DiskInode(NamedTuple):
    """Either inode format, loaded; compact inodes have no mtime."""

    nid: int
    offset: int
    i_format: int
    xattr_icount: int
    mode: int
    nlink: int
    size: int
    u: int
    uid: int
    gid: int
    mtime: int = 0
    mtime_nsec: int = 0

    @property
    def extended(self) -> bool:
        return bool(self.i_format & 1)

    @property
    def layout(self) -> int:
        return self.i_format >> 1 & 0x7

    @property
    def inode_size(self) -> int:
        return _INODE_EXTENDED.size if self.extended else _INODE_COMPACT.size

    @property
    def xattr_size(self) -> int:
        return 0 if self.xattr_icount == 0 else 12 + 4 * (self.xattr_icount - 1)

    @property
    def body_end(self) -> int:
        """End of the inode and its inline xattrs: where an inline data tail starts."""
        return self.offset + self.inode_size + self.xattr_size


class _Dirent(NamedTuple):
    name: bytes
    nid: int
    file_type: int
    offset: int  # of the dirent record, for error messages


class _Payload(NamedTuple):
    """What an inode carries besides its attributes; shared by the names of a hardlink."""

    xattrs: dict[bytes, bytes]
    symlink: bytes | None
    chunks: tuple[ChunkInfo, ...]
    rdev: int


_ChunkKey = tuple[int, int, int]  # blob index, CI index, uncompressed offset / 4 KiB

# --- public entry points ----------------------------------------------------------------


def is_v6(data: bytes) -> bool:
    """Whether `data` looks like a RAFS v6 bootstrap: the EROFS magic at offset 1024."""
    if len(data) < EROFS_SUPER_OFFSET + _U32.size:
        return False
    return bool(_U32.unpack_from(data, EROFS_SUPER_OFFSET)[0] == EROFS_MAGIC)


def load_v6(data: bytes) -> Bootstrap:
    """Parse and check a whole RAFS v6 bootstrap; raise `RafsError` subclasses only."""
    erofs = _load_erofs_super(data)
    _check_erofs_super(erofs, len(data))
    rafs = _load_rafs_super(data)
    _check_rafs_super(rafs, erofs, len(data))
    records = _load_blob_table(data, erofs, rafs)
    compressor, digester = _codecs(rafs.flags, records)
    blobs = [_blob_info(record) for record in records]
    chunks = _load_chunk_table(data, rafs, blobs)
    tree = _Tree(data, erofs.meta_blkaddr * BLOCK_SIZE, rafs.chunk_size, chunks)
    inodes = tree.load(erofs.root_nid)
    return Bootstrap(
        version=6,
        chunk_size=rafs.chunk_size,
        flags=rafs.flags,
        compressor=compressor,
        digester=digester,
        blobs=blobs,
        inodes=inodes,
        root_index=1,
        prefetch=_load_prefetch(data, rafs, tree.nid_ino),
    )


# --- small helpers ----------------------------------------------------------------------


def _unpack(record: struct.Struct, data: bytes, offset: int, what: str) -> tuple[Any, ...]:
    """Unpack `record` at `offset`, refusing to read outside `data`."""
    _check_range(offset, record.size, len(data), what)
    return record.unpack_from(data, offset)


def _check_range(offset: int, size: int, limit: int, what: str) -> None:
    if offset < 0 or size < 0 or offset + size > limit:
        raise CorruptBootstrap(f"offset of {what} ({size} bytes, bootstrap is {limit})", offset)


def _ceil_div(n: int, d: int) -> int:
    return -(-n // d)


def _align(n: int, unit: int) -> int:
    return _ceil_div(n, unit) * unit


def _single_bit(flags: int, choices: dict[int, Any], what: str) -> Any:
    """The one value of `choices` whose bit is set in `flags`."""
    found = [value for bit, value in choices.items() if flags & bit]
    if len(found) != 1:
        raise CorruptBootstrap(what, hex(flags), _RAFS_SUPER_OFFSET)
    return found[0]


# --- superblocks (§2, §3) ---------------------------------------------------------------


def _load_erofs_super(data: bytes) -> _ErofsSuper:
    fields = _unpack(_EROFS_SUPER, data, EROFS_SUPER_OFFSET, "EROFS superblock")
    return _ErofsSuper._make(fields)


def _load_rafs_super(data: bytes) -> _RafsSuper:
    fields = _unpack(_RAFS_SUPER, data, _RAFS_SUPER_OFFSET, "RAFS v6 superblock")
    return _RafsSuper._make(fields)


# Fields that have exactly one valid value: (name, offset in the superblock, value).
_EROFS_FIXED: Final = (
    ("checksum", 4, 0),
    ("blkszbits", 12, _BLOCK_BITS),
    ("extslots", 13, 0),
    ("xattr_blkaddr", 44, 0),
    ("feature_incompat", 80, _FEATURE_INCOMPAT_RAFS),
    ("u", 84, 0),
    ("devt_slotoff", 88, _DEVT_SLOTOFF),
)


def _check_erofs_super(sb: _ErofsSuper, size: int) -> None:
    if sb.magic != EROFS_MAGIC:
        raise CorruptBootstrap("s_magic", hex(sb.magic), EROFS_SUPER_OFFSET)
    if sb.blkszbits == 9:
        raise UnsupportedFormat("RAFS v6 with 512-byte blocks (tarfs mode) is not supported")
    for name, offset, expected in _EROFS_FIXED:
        if getattr(sb, name) != expected:
            raise CorruptBootstrap(f"s_{name}", getattr(sb, name), EROFS_SUPER_OFFSET + offset)
    if not sb.feature_compat & _FEATURE_COMPAT_RAFS_V6:
        raise CorruptBootstrap("s_feature_compat", hex(sb.feature_compat), EROFS_SUPER_OFFSET + 8)
    if sb.inos == 0:
        raise CorruptBootstrap("s_inos", sb.inos, EROFS_SUPER_OFFSET + 16)
    if sb.extra_devices == 0 and sb.blocks not in (0, 4096):
        raise CorruptBootstrap("s_blocks", sb.blocks, EROFS_SUPER_OFFSET + 36)
    _check_bootstrap_size(sb, size)


def _check_bootstrap_size(sb: _ErofsSuper, size: int) -> None:
    if size < BLOCK_SIZE or size % BLOCK_SIZE:
        raise CorruptBootstrap("bootstrap size", size)
    if sb.meta_blkaddr * BLOCK_SIZE > size:
        raise CorruptBootstrap("s_meta_blkaddr", sb.meta_blkaddr, EROFS_SUPER_OFFSET + 40)
    if sb.device_table_end > size:
        raise CorruptBootstrap("s_extra_devices", sb.extra_devices, EROFS_SUPER_OFFSET + 86)


# Where each table's offset field sits in the RAFS superblock; its size field follows.
_TABLE_FIELDS: Final = {"s_blob_table": 8, "s_chunk_table": 24, "s_prefetch_table": 40}


def _check_rafs_super(ext: _RafsSuper, sb: _ErofsSuper, size: int) -> None:
    _check_flags(ext.flags)
    chunk_size = ext.chunk_size
    if chunk_size & (chunk_size - 1) or not _MIN_CHUNK_SIZE <= chunk_size <= _MAX_CHUNK_SIZE:
        raise CorruptBootstrap("s_chunk_size", chunk_size, _RAFS_SUPER_OFFSET + 20)
    floor = max(BLOCK_SIZE, sb.device_table_end)
    _check_table(
        "s_blob_table", ext.blob_table_offset, ext.blob_table_size, _BLOB_RECORD.size, floor, size
    )
    if ext.blob_table_size // _BLOB_RECORD.size != sb.extra_devices:
        raise CorruptBootstrap("s_blob_table_size", ext.blob_table_size, _RAFS_SUPER_OFFSET + 16)
    if ext.chunk_table_size:
        offset, length = ext.chunk_table_offset, ext.chunk_table_size
        _check_table("s_chunk_table", offset, length, _CHUNK_RECORD.size, floor, size)
        _check_disjoint(ext)
    if ext.prefetch_table_size and ext.prefetch_table_offset:
        offset, length = ext.prefetch_table_offset, ext.prefetch_table_size
        _check_table("s_prefetch_table", offset, length, _U32.size, floor, size, aligned=False)


def _check_flags(flags: int) -> None:
    if flags & ~_KNOWN_FLAGS:
        raise CorruptBootstrap("s_flags", hex(flags), _RAFS_SUPER_OFFSET)
    if flags & FLAG_TARTFS_MODE:
        raise UnsupportedFormat("RAFS v6 in tarfs mode is not supported")
    if flags & FLAG_ENCRYPTION_AES128XTS:
        raise UnsupportedFormat("encrypted RAFS v6 images are not supported")
    _single_bit(flags, _FLAG_COMPRESSORS, "s_flags compression bits")
    _single_bit(flags, _FLAG_DIGESTERS, "s_flags digest bits")


def _check_table(
    name: str, offset: int, length: int, unit: int, floor: int, size: int, *, aligned: bool = True
) -> None:
    """A table lies in the bootstrap, past the device table, in whole records."""
    field_offset = _RAFS_SUPER_OFFSET + _TABLE_FIELDS[name]
    if offset < floor or (aligned and offset % BLOCK_SIZE) or offset + length > size:
        raise CorruptBootstrap(f"{name}_offset", offset, field_offset)
    if length % unit:
        raise CorruptBootstrap(f"{name}_size", length, field_offset + 8)


def _check_disjoint(ext: _RafsSuper) -> None:
    blob_end = ext.blob_table_offset + ext.blob_table_size
    chunk_end = ext.chunk_table_offset + ext.chunk_table_size
    if ext.chunk_table_offset < blob_end and ext.blob_table_offset < chunk_end:
        raise CorruptBootstrap(
            "s_chunk_table_offset", ext.chunk_table_offset, _RAFS_SUPER_OFFSET + 24
        )


# --- device and blob tables (§4, §5) ---------------------------------------------------


def _load_blob_table(data: bytes, sb: _ErofsSuper, ext: _RafsSuper) -> list[_BlobRecord]:
    records: list[_BlobRecord] = []
    seen: set[bytes] = set()
    for position in range(sb.extra_devices):
        offset = ext.blob_table_offset + position * _BLOB_RECORD.size
        record = _BlobRecord._make(_unpack(_BLOB_RECORD, data, offset, "blob record"))
        _check_blob_record(record, position, ext.chunk_size, offset)
        slot_offset = _DEVT_SLOTOFF * _DEVICE_SLOT.size + position * _DEVICE_SLOT.size
        slot = _DeviceSlot._make(_unpack(_DEVICE_SLOT, data, slot_offset, "device slot"))
        _check_device_slot(slot, record, slot_offset)
        if record.blob_id in seen:
            raise CorruptBootstrap("duplicate blob_id", _blob_id(record.blob_id, offset), offset)
        seen.add(record.blob_id)
        records.append(record)
    return records


def _check_blob_record(record: _BlobRecord, position: int, chunk_size: int, offset: int) -> None:
    _blob_id(record.blob_id, offset)
    if record.blob_index != position:
        raise CorruptBootstrap("blob_index", record.blob_index, offset + 64)
    if record.chunk_size != chunk_size:
        raise CorruptBootstrap("blob chunk_size", record.chunk_size, offset + 68)
    if record.chunk_count > _MAX_BLOB_CHUNKS:
        raise CorruptBootstrap("blob chunk_count", record.chunk_count, offset + 72)
    if record.compression_algo >= len(_BLOB_COMPRESSORS):
        raise CorruptBootstrap("blob compression_algo", record.compression_algo, offset + 76)
    if record.digest_algo >= len(_BLOB_DIGESTERS):
        raise CorruptBootstrap("blob digest_algo", record.digest_algo, offset + 80)
    _check_blob_features(record.features, offset + 84)
    if record.cipher_algo > _MAX_CIPHER_ALGO:
        raise CorruptBootstrap("blob cipher_algo", record.cipher_algo, offset + 216)
    if record.cipher_algo:
        raise UnsupportedFormat(f"encrypted blob (cipher_algo {record.cipher_algo})")


def _check_blob_features(features: int, offset: int) -> None:
    if features & _BLOB_INCOMPAT_RESERVED or not features & BLOB_ALIGNED:
        raise CorruptBootstrap("blob features", hex(features), offset)
    for bit, name in _BLOB_UNSUPPORTED.items():
        if features & bit:
            raise UnsupportedFormat(f"{name} blobs are not supported (features {features:#x})")


def _check_device_slot(slot: _DeviceSlot, record: _BlobRecord, offset: int) -> None:
    if slot.blob_id != record.blob_id:
        raise CorruptBootstrap("device slot blob_id", _printable(slot.blob_id), offset)
    if slot.blocks == 0:
        raise CorruptBootstrap("device slot blocks", slot.blocks, offset + 64)


def _blob_id(raw: bytes, offset: int) -> str:
    """The NUL-padded ASCII id; only characters that are safe in a file name."""
    text = raw.rstrip(b"\0")
    if not text or text.startswith(b".") or not _BLOB_ID_CHARS.issuperset(text):
        raise CorruptBootstrap("blob_id", _printable(raw), offset)
    return text.decode("ascii")


def _printable(raw: bytes) -> str:
    return raw.rstrip(b"\0").decode("ascii", errors="backslashreplace")


def _blob_info(record: _BlobRecord) -> BlobInfo:
    return BlobInfo(
        blob_id=record.blob_id.rstrip(b"\0").decode("ascii"),
        chunk_count=record.chunk_count,
        uncompressed_size=record.uncompressed_size,
        compressed_size=record.compressed_size,
        features=record.features,
    )


def _codecs(flags: int, records: list[_BlobRecord]) -> tuple[Compressor, Digester]:
    """The image-wide codecs; v6 also stores them per blob, and they must agree."""
    compressor: Compressor = _single_bit(flags, _FLAG_COMPRESSORS, "s_flags compression bits")
    digester: Digester = _single_bit(flags, _FLAG_DIGESTERS, "s_flags digest bits")
    for record in records:
        name = _printable(record.blob_id)
        blob_compressor = _BLOB_COMPRESSORS[record.compression_algo]
        if blob_compressor is not compressor:
            raise UnsupportedFormat(
                f"blob {name} uses {blob_compressor.value}, the bootstrap {compressor.value}: "
                "per-blob compressors are not supported"
            )
        if _BLOB_DIGESTERS[record.digest_algo] is not digester:
            raise UnsupportedFormat(f"blob {name} uses a digester other than {digester.value}")
    return compressor, digester


# --- chunk table (§11) -------------------------------------------------------------------


def _load_chunk_table(
    data: bytes, ext: _RafsSuper, blobs: list[BlobInfo]
) -> dict[_ChunkKey, ChunkInfo]:
    table: dict[_ChunkKey, ChunkInfo] = {}
    for n in range(ext.chunk_table_size // _CHUNK_RECORD.size):
        offset = ext.chunk_table_offset + n * _CHUNK_RECORD.size
        chunk = ChunkInfo(*_unpack(_CHUNK_RECORD, data, offset, "chunk record"))
        _check_chunk_record(chunk, blobs, ext.chunk_size, offset)
        _add_chunk(table, chunk, offset)
    return table


def _check_chunk_record(
    chunk: ChunkInfo, blobs: list[BlobInfo], chunk_size: int, offset: int
) -> None:
    if chunk.blob_index >= len(blobs):
        raise CorruptBootstrap("chunk blob_index", chunk.blob_index, offset + 32)
    _check_chunk_flags(chunk, offset)
    if not 0 < chunk.uncompressed_size <= chunk_size:
        raise CorruptBootstrap("chunk uncompressed_size", chunk.uncompressed_size, offset + 44)
    _check_chunk_place(chunk, blobs[chunk.blob_index], offset)


def _check_chunk_flags(chunk: ChunkInfo, offset: int) -> None:
    if chunk.flags & ~_KNOWN_CHUNK_FLAGS:
        raise CorruptBootstrap("chunk flags", hex(chunk.flags), offset + 36)
    if chunk.flags & _UNSUPPORTED_CHUNK_FLAGS:
        raise UnsupportedFormat(
            f"hole, encrypted or batch chunks are not supported ({chunk.flags:#x})"
        )
    if chunk.compressed_size == 0 or (
        not chunk.compressed and chunk.compressed_size != chunk.uncompressed_size
    ):
        raise CorruptBootstrap("chunk compressed_size", chunk.compressed_size, offset + 40)


def _check_chunk_place(chunk: ChunkInfo, blob: BlobInfo, offset: int) -> None:
    """The chunk lies inside its blob, in both address spaces."""
    if chunk.compressed_offset + chunk.compressed_size > blob.compressed_size:
        raise CorruptBootstrap("chunk compressed_offset", chunk.compressed_offset, offset + 48)
    end = chunk.uncompressed_offset + chunk.uncompressed_size
    if chunk.uncompressed_offset % BLOCK_SIZE or end > blob.uncompressed_size:
        raise CorruptBootstrap("chunk uncompressed_offset", chunk.uncompressed_offset, offset + 56)
    if chunk.index >= blob.chunk_count:
        raise CorruptBootstrap("chunk index", chunk.index, offset + 72)


def _add_chunk(table: dict[_ChunkKey, ChunkInfo], chunk: ChunkInfo, offset: int) -> None:
    """Key a record the way chunk index entries address it; repeats must agree."""
    key = (chunk.blob_index, chunk.index, chunk.uncompressed_offset // BLOCK_SIZE)
    known = table.setdefault(key, chunk)
    if dataclasses.replace(known, file_offset=0) != dataclasses.replace(chunk, file_offset=0):
        raise CorruptBootstrap("chunk record repeating (blob, index, block)", key, offset)


# --- prefetch table (§6) -----------------------------------------------------------------


def _load_prefetch(data: bytes, ext: _RafsSuper, nid_ino: dict[int, int]) -> list[int]:
    """The prefetch table names nids; the model wants the inos given to them."""
    if not (ext.prefetch_table_size and ext.prefetch_table_offset):
        return []
    inos: list[int] = []
    for n in range(ext.prefetch_table_size // _U32.size):
        offset = ext.prefetch_table_offset + n * _U32.size
        (nid,) = _unpack(_U32, data, offset, "prefetch entry")
        if nid not in nid_ino:
            raise CorruptBootstrap("prefetch table nid", nid, offset)
        inos.append(nid_ino[nid])
    return inos


# --- inodes (§8) --------------------------------------------------------------------------


def _load_inode(data: bytes, meta_base: int, nid: int) -> _DiskInode:
    offset = meta_base + _NID_UNIT * nid
    (i_format,) = _unpack(_U16, data, offset, f"inode of nid {nid}")
    if i_format & 1:
        return _load_extended(data, nid, offset)
    return _load_compact(data, nid, offset)


def _load_extended(data: bytes, nid: int, offset: int) -> _DiskInode:
    fmt, icount, mode, _, size, u, _ino, uid, gid, mtime, nsec, nlink, _ = _unpack(
        _INODE_EXTENDED, data, offset, f"extended inode of nid {nid}"
    )
    return _DiskInode(nid, offset, fmt, icount, mode, nlink, size, u, uid, gid, mtime, nsec)


def _load_compact(data: bytes, nid: int, offset: int) -> _DiskInode:
    fmt, icount, mode, nlink, size, _, u, _ino, uid, gid, _ = _unpack(
        _INODE_COMPACT, data, offset, f"compact inode of nid {nid}"
    )
    return _DiskInode(nid, offset, fmt, icount, mode, nlink, size, u, uid, gid)


def _check_inode(inode: _DiskInode, size: int) -> None:
    if inode.i_format & ~_I_FORMAT_KNOWN or inode.layout > LAYOUT_CHUNK_BASED:
        raise CorruptBootstrap("i_format", hex(inode.i_format), inode.offset)
    if inode.layout in _LAYOUTS_COMPRESSED:
        raise UnsupportedFormat(f"EROFS compressed inode (nid {inode.nid}) in a RAFS bootstrap")
    if stat.S_IFMT(inode.mode) not in _FILE_TYPES.values():
        raise CorruptBootstrap("i_mode", oct(inode.mode), inode.offset + 4)
    if inode.nlink == 0:
        raise CorruptBootstrap("i_nlink", inode.nlink, inode.offset)
    _check_range(inode.offset, inode.body_end - inode.offset, size, f"inode of nid {inode.nid}")
    _check_layout(inode)


def _check_layout(inode: _DiskInode) -> None:
    """Directories and symlinks are flat; regular files are chunk-based unless empty."""
    kind = stat.S_IFMT(inode.mode)
    flat = inode.layout in _LAYOUTS_FLAT
    if kind in (stat.S_IFDIR, stat.S_IFLNK) and not flat:
        raise CorruptBootstrap(
            "i_format layout of a directory or symlink", inode.layout, inode.offset
        )
    if kind == stat.S_IFLNK and inode.size == 0:
        raise CorruptBootstrap("symlink i_size", inode.size, inode.offset)
    if kind == stat.S_IFREG and inode.layout != LAYOUT_CHUNK_BASED and inode.size:
        raise UnsupportedFormat(f"regular file with flat data layout (nid {inode.nid})")


def _make_inode(
    disk: _DiskInode, payload: _Payload, index: int, ino: int, parent: int, name: bytes
) -> Inode:
    flags = (_INODE_SYMLINK if payload.symlink is not None else 0) | (
        _INODE_XATTR if payload.xattrs else 0
    )
    return Inode(
        index=index,
        ino=ino,
        parent=parent,
        name=name,
        mode=disk.mode,
        uid=disk.uid,
        gid=disk.gid,
        size=disk.size,
        blocks=_ceil_div(disk.size, 512),
        nlink=disk.nlink,
        rdev=payload.rdev,
        mtime=disk.mtime,
        mtime_nsec=disk.mtime_nsec,
        flags=flags,
        symlink=payload.symlink,
        xattrs=dict(payload.xattrs),
        chunks=payload.chunks,
    )


# --- inline xattrs (§13) ------------------------------------------------------------------


def _load_xattrs(data: bytes, inode: _DiskInode) -> dict[bytes, bytes]:
    """Inline xattrs right after the inode (already known to lie inside `data`)."""
    if inode.xattr_icount == 0:
        return {}
    start = inode.offset + inode.inode_size
    _, shared, _ = _unpack(_XATTR_HEADER, data, start, "xattr header")
    if shared:
        raise CorruptBootstrap("h_shared_count", shared, start + 4)
    xattrs: dict[bytes, bytes] = {}
    position = start + _XATTR_HEADER.size
    while position < inode.body_end:
        name, value, after = _xattr_entry(data, position, inode.body_end)
        if name in xattrs:
            raise CorruptBootstrap("duplicate xattr name", name, position)
        xattrs[name] = value
        position = after
    return xattrs


def _xattr_entry(data: bytes, position: int, end: int) -> tuple[bytes, bytes, int]:
    """One entry: (full name, value, position of the next entry)."""
    if position + _XATTR_ENTRY.size > end:
        raise CorruptBootstrap("xattr entry past the xattr area", end - position, position)
    name_len, name_index, value_size = _XATTR_ENTRY.unpack_from(data, position)
    name_start = position + _XATTR_ENTRY.size
    value_start = name_start + name_len
    if value_start + value_size > end:
        raise CorruptBootstrap("xattr e_value_size", value_size, position + 2)
    name = _xattr_name(name_index, data[name_start:value_start], position)
    value = data[value_start : value_start + value_size]
    return name, value, position + _align(_XATTR_ENTRY.size + name_len + value_size, 4)


def _xattr_name(name_index: int, suffix: bytes, position: int) -> bytes:
    prefix = _XATTR_PREFIXES.get(name_index)
    if prefix is None:
        raise CorruptBootstrap("xattr e_name_index", name_index, position + 1)
    if (name_index in _XATTR_WHOLE_NAMES) == bool(suffix) or b"\0" in suffix:
        raise CorruptBootstrap("xattr name", prefix + suffix, position)
    return prefix + suffix


# --- flat data: directory blocks and symlink targets (§8.3, §9) ----------------------------


def _data_extents(inode: _DiskInode, size: int) -> list[tuple[int, int]]:
    """(offset, length) of each block of a flat inode's data; the last may be short."""
    if inode.size == 0:
        return []
    blocks = _ceil_div(inode.size, BLOCK_SIZE)
    inline = inode.layout == LAYOUT_FLAT_INLINE
    plain = blocks - 1 if inline else blocks  # blocks stored at block i_u
    start = inode.u * BLOCK_SIZE  # unused when everything is inline
    if plain:
        _check_range(start, min(plain * BLOCK_SIZE, inode.size), size, f"data of nid {inode.nid}")
    extents = [
        (start + j * BLOCK_SIZE, min(BLOCK_SIZE, inode.size - j * BLOCK_SIZE)) for j in range(plain)
    ]
    if inline:
        extents.append(_inline_tail(inode, size, inode.size - plain * BLOCK_SIZE))
    return extents


def _inline_tail(inode: _DiskInode, size: int, length: int) -> tuple[int, int]:
    """The last data block, stored right after the inode; it may not cross a block."""
    offset = inode.body_end
    if offset % BLOCK_SIZE + length > BLOCK_SIZE:
        raise CorruptBootstrap("inline data crossing a block, length", length, offset)
    _check_range(offset, length, size, f"inline data of nid {inode.nid}")
    return offset, length


def _load_symlink(data: bytes, inode: _DiskInode) -> bytes:
    extents = _data_extents(inode, len(data))
    target = b"".join(data[offset : offset + length] for offset, length in extents)
    if b"\0" in target:
        raise CorruptBootstrap("symlink target", target, inode.offset)
    return target


def _parse_dirent_block(block: bytes, offset: int) -> list[_Dirent]:
    """The dirents of one directory block at `offset`: 12-byte heads, then the names."""
    if len(block) < _DIRENT.size:
        raise CorruptBootstrap("directory block length", len(block), offset)
    nameoff = _DIRENT.unpack_from(block, 0)[1]
    if nameoff % _DIRENT.size or not _DIRENT.size <= nameoff < len(block):
        raise CorruptBootstrap("e_nameoff of a block's first dirent", nameoff, offset + 8)
    heads = [_DIRENT.unpack_from(block, i) for i in range(0, nameoff, _DIRENT.size)]
    starts = [head[1] for head in heads]
    ends = [*starts[1:], _last_name_end(block, starts[-1])]
    return [
        _dirent(block, offset, i, head, end)
        for i, (head, end) in enumerate(zip(heads, ends, strict=True))
    ]


def _last_name_end(block: bytes, start: int) -> int:
    """The last name of a block ends at the first NUL or at the block's used bytes."""
    nul = block.find(b"\0", start)
    return len(block) if nul < 0 else nul


def _dirent(block: bytes, block_offset: int, i: int, head: tuple[int, ...], end: int) -> _Dirent:
    nid, start, file_type, _ = head
    offset = block_offset + i * _DIRENT.size
    if not start < end <= len(block):
        raise CorruptBootstrap("e_nameoff", start, offset + 8)
    name = block[start:end]
    if len(name) > _NAME_MAX or b"/" in name or b"\0" in name:
        raise CorruptBootstrap("dirent name", name, block_offset + start)
    if file_type > max(_FILE_TYPES):
        raise CorruptBootstrap("e_file_type", file_type, offset + 10)
    return _Dirent(name, nid, file_type, offset)


def _check_dirents(entries: list[_Dirent], nid: int, parent_nid: int, offset: int) -> None:
    """Names strictly in byte order (no duplicates); `.` and `..` point where they should."""
    for before, entry in itertools.pairwise(entries):
        if entry.name <= before.name:
            raise CorruptBootstrap("dirent name out of order", entry.name, entry.offset)
    targets = {entry.name: entry for entry in entries if entry.name in (_DOT, _DOTDOT)}
    for name, expected in ((_DOT, nid), (_DOTDOT, parent_nid)):
        dot = targets.get(name)
        if dot is None:
            raise CorruptBootstrap(f"directory without {name.decode()!r}: nid", nid, offset)
        if dot.nid != expected:
            raise CorruptBootstrap(f"e_nid of {name.decode()!r}", dot.nid, dot.offset)


def _check_file_type(entry: _Dirent, inode: _DiskInode) -> None:
    """A dirent's file type, when given, matches the inode it names."""
    if entry.file_type and _FILE_TYPES[entry.file_type] != stat.S_IFMT(inode.mode):
        raise CorruptBootstrap("e_file_type", entry.file_type, entry.offset + 10)


# --- chunk-based files (§10) --------------------------------------------------------------


def _check_chunk_format(inode: _DiskInode) -> None:
    """i_u of a chunk-based file: the "indexes" bit, a chunk size code, nothing else."""
    if inode.u & ~(_CHUNK_FORMAT_INDEXES | _CHUNK_FORMAT_BLKBITS):
        raise CorruptBootstrap("chunk format i_u", hex(inode.u), inode.offset + 16)
    if not inode.u & _CHUNK_FORMAT_INDEXES:
        raise UnsupportedFormat(f"chunk block-map format (nid {inode.nid}) is not supported")


def _chunk_key(addr: tuple[int, int, int], offset: int) -> _ChunkKey:
    lo, hi, block = addr
    device = hi & 0xFF
    if device == 0:
        raise CorruptBootstrap("c_blob_addr_hi device id", hi, offset + 2)
    return device - 1, (hi >> 8) << 16 | lo, block


# --- the tree -------------------------------------------------------------------------------


@dataclass
class _Tree:
    """Walks the directories from the root and numbers every name as the v5 builder does.

    Each directory's entries get consecutive indices in name order, then its
    subdirectories are walked in name order. A non-directory nid met again is a hardlink:
    a new index with the `ino` (first index) of the nid.
    """

    data: bytes
    meta_base: int
    chunk_size: int
    chunks: dict[_ChunkKey, ChunkInfo]
    inodes: dict[int, Inode] = field(default_factory=dict)
    nid_ino: dict[int, int] = field(default_factory=dict)
    _disks: dict[int, _DiskInode] = field(default_factory=dict)
    _payloads: dict[int, _Payload] = field(default_factory=dict)
    _dirs: set[int] = field(default_factory=set)
    _dirents_left: int = 0

    def load(self, root_nid: int) -> dict[int, Inode]:
        self._dirents_left = len(self.data) // _DIRENT.size
        root = self._disk(root_nid)
        if not stat.S_ISDIR(root.mode):
            raise CorruptBootstrap("root i_mode", oct(root.mode), root.offset + 4)
        self._dirs.add(root_nid)
        self._add_name(root_nid, 0, b"/")
        pending = [(1, root_nid, root_nid)]  # (index, nid, parent nid) of a directory
        while pending:
            pending.extend(reversed(self._fill_directory(*pending.pop())))
        return self.inodes

    def _fill_directory(self, index: int, nid: int, parent_nid: int) -> list[tuple[int, int, int]]:
        """Give the entries of one directory their indices; return its subdirectories."""
        directory = self.inodes[index]
        named = [
            (self._add_child(entry, directory.ino), entry.nid)
            for entry in self._entries(nid, parent_nid)
        ]
        directory.children = tuple(child.index for child, _ in named)
        # v5's i_child_index: the first child, or the next free index when there is none
        directory.child_index = named[0][0].index if named else len(self.inodes) + 1
        return [(child.index, child_nid, nid) for child, child_nid in named if child.is_dir]

    def _entries(self, nid: int, parent_nid: int) -> list[_Dirent]:
        inode = self._disk(nid)
        entries: list[_Dirent] = []
        for offset, length in _data_extents(inode, len(self.data)):
            entries += _parse_dirent_block(self.data[offset : offset + length], offset)
        self._dirents_left -= len(entries)
        if self._dirents_left < 0:
            raise CorruptBootstrap(
                "directory entries, more than fit in the bootstrap", len(entries), inode.offset
            )
        _check_dirents(entries, nid, parent_nid, inode.offset)
        return [entry for entry in entries if entry.name not in (_DOT, _DOTDOT)]

    def _add_child(self, entry: _Dirent, parent_ino: int) -> Inode:
        inode = self._disk(entry.nid)
        _check_file_type(entry, inode)
        if stat.S_ISDIR(inode.mode):
            if entry.nid in self._dirs:
                raise CorruptBootstrap(
                    "directory cycle or linked directory: e_nid", entry.nid, entry.offset
                )
            self._dirs.add(entry.nid)
        return self._add_name(entry.nid, parent_ino, entry.name)

    def _add_name(self, nid: int, parent_ino: int, name: bytes) -> Inode:
        index = len(self.inodes) + 1
        ino = self.nid_ino.setdefault(nid, index)
        disk = self._disk(nid)
        inode = _make_inode(disk, self._payload(disk), index, ino, parent_ino, name)
        self.inodes[index] = inode
        return inode

    def _disk(self, nid: int) -> _DiskInode:
        if nid not in self._disks:
            inode = _load_inode(self.data, self.meta_base, nid)
            _check_inode(inode, len(self.data))
            self._disks[nid] = inode
        return self._disks[nid]

    def _payload(self, inode: _DiskInode) -> _Payload:
        if inode.nid not in self._payloads:
            self._payloads[inode.nid] = self._load_payload(inode)
        return self._payloads[inode.nid]

    def _load_payload(self, inode: _DiskInode) -> _Payload:
        xattrs = _load_xattrs(self.data, inode)
        kind = stat.S_IFMT(inode.mode)
        symlink = _load_symlink(self.data, inode) if kind == stat.S_IFLNK else None
        chunks = self._file_chunks(inode) if kind == stat.S_IFREG else ()
        rdev = inode.u if kind in (stat.S_IFCHR, stat.S_IFBLK) else 0
        return _Payload(xattrs, symlink, chunks, rdev)

    def _file_chunks(self, inode: _DiskInode) -> tuple[ChunkInfo, ...]:
        if inode.layout != LAYOUT_CHUNK_BASED:
            return ()  # an empty file stored flat
        _check_chunk_format(inode)
        count = _ceil_div(inode.size, self.chunk_size)
        start = inode.offset + _align(inode.inode_size + inode.xattr_size, _CHUNK_ADDR.size)
        _check_range(
            start, count * _CHUNK_ADDR.size, len(self.data), f"chunk indexes of nid {inode.nid}"
        )
        return tuple(self._chunk(inode, n, start + n * _CHUNK_ADDR.size) for n in range(count))

    def _chunk(self, inode: _DiskInode, n: int, offset: int) -> ChunkInfo:
        key = _chunk_key(_CHUNK_ADDR.unpack_from(self.data, offset), offset)
        chunk = self.chunks.get(key)
        if chunk is None:
            raise CorruptBootstrap(
                "chunk index entry not in the chunk table (blob, index, block)", key, offset
            )
        file_offset = n * self.chunk_size
        if chunk.uncompressed_size != min(self.chunk_size, inode.size - file_offset):
            raise CorruptBootstrap(
                "chunk uncompressed_size for its file", chunk.uncompressed_size, offset
            )
        return dataclasses.replace(chunk, file_offset=file_offset)
