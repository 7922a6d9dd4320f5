"""RAFS v5 on-disk records, declared once.

Each record is one little-endian `struct.Struct` with a size assertion; field meanings
follow ../shared/formats/rafs-v5.md (section numbers in the comments). Nothing here reads
or writes a file: the loader and the writer use these to pack and unpack bytes.
"""

from __future__ import annotations

import struct
from typing import Final

# --- constants (§2) ---------------------------------------------------------------
MAGIC: Final = 0x52414653
VERSION: Final = 0x500
SUPERBLOCK_SIZE: Final = 8192
MIN_CHUNK_SIZE: Final = 0x1000
MAX_CHUNK_SIZE: Final = 0x1000000
MAX_BOOTSTRAP_SIZE: Final = 2 << 30
NAME_MAX: Final = 255
XATTR_NAME_MAX: Final = 255
XATTR_VALUE_MAX: Final = 65536

# s_flags (§2)
FLAG_COMPRESSION_NONE: Final = 0x1
FLAG_COMPRESSION_LZ4: Final = 0x2
FLAG_HASH_BLAKE3: Final = 0x4
FLAG_HASH_SHA256: Final = 0x8
FLAG_EXPLICIT_UID_GID: Final = 0x10
FLAG_HAS_XATTR: Final = 0x20
FLAG_COMPRESSION_GZIP: Final = 0x40
FLAG_COMPRESSION_ZSTD: Final = 0x80
FLAG_INLINED_CHUNK_DIGEST: Final = 0x100
FLAG_TARTFS_MODE: Final = 0x200
FLAG_ENCRYPTION_NONE: Final = 0x0100_0000
FLAG_ENCRYPTION_AES128XTS: Final = 0x0200_0000
FLAG_RESERVED_COMPAT: Final = 0xFC00_0000
KNOWN_FLAGS: Final = (
    FLAG_COMPRESSION_NONE
    | FLAG_COMPRESSION_LZ4
    | FLAG_HASH_BLAKE3
    | FLAG_HASH_SHA256
    | FLAG_EXPLICIT_UID_GID
    | FLAG_HAS_XATTR
    | FLAG_COMPRESSION_GZIP
    | FLAG_COMPRESSION_ZSTD
    | FLAG_INLINED_CHUNK_DIGEST
    | FLAG_TARTFS_MODE
    | FLAG_ENCRYPTION_NONE
    | FLAG_ENCRYPTION_AES128XTS
    | FLAG_RESERVED_COMPAT
)

# i_flags (§7.2)
INODE_SYMLINK: Final = 0x1
INODE_HARDLINK: Final = 0x2
INODE_XATTR: Final = 0x4
INODE_HAS_HOLE: Final = 0x8
KNOWN_INODE_FLAGS: Final = INODE_SYMLINK | INODE_HARDLINK | INODE_XATTR | INODE_HAS_HOLE

# blob features (§6)
BLOB_FEATURE_CAP_TAR_TOC: Final = 0x4000_0000

XATTR_PREFIXES: Final = (
    b"user.",
    b"security.",
    b"trusted.",
    b"system.posix_acl_access",
    b"system.posix_acl_default",
)

# --- records ------------------------------------------------------------------------

# §2 superblock: the first 80 bytes; the rest of the 8192 is zero.
SUPERBLOCK = struct.Struct(
    "<"
    "I"  # s_magic
    "I"  # s_fs_version
    "I"  # s_sb_size
    "I"  # s_block_size: the chunk size
    "Q"  # s_flags
    "Q"  # s_inodes_count (informational)
    "Q"  # s_inode_table_offset
    "Q"  # s_prefetch_table_offset
    "Q"  # s_blob_table_offset
    "I"  # s_inode_table_entries
    "I"  # s_prefetch_table_entries
    "I"  # s_blob_table_size (bytes, padded)
    "I"  # s_extended_blob_table_entries
    "Q"  # s_extended_blob_table_offset
)
assert SUPERBLOCK.size == 80

# §7.1 inode header, followed by name, symlink, xattrs, chunks.
INODE = struct.Struct(
    "<"
    "32s"  # i_digest
    "Q"  # i_parent: ino of the parent, 0 for the root
    "Q"  # i_ino
    "I"  # i_uid
    "I"  # i_gid
    "I"  # i_projid
    "I"  # i_mode
    "Q"  # i_size
    "Q"  # i_blocks
    "Q"  # i_flags
    "I"  # i_nlink
    "I"  # i_child_index
    "I"  # i_child_count: children (dir) or chunk records (file)
    "H"  # i_name_size
    "H"  # i_symlink_size
    "I"  # i_rdev
    "I"  # i_mtime_nsec
    "Q"  # i_mtime
    "8s"  # i_reserved
)
assert INODE.size == 128

# §9 chunk record.
CHUNK = struct.Struct(
    "<"
    "32s"  # block_id: H(uncompressed bytes)
    "I"  # blob_index
    "I"  # flags
    "I"  # compressed_size
    "I"  # uncompressed_size
    "Q"  # compressed_offset
    "Q"  # uncompressed_offset
    "Q"  # file_offset
    "I"  # index inside the blob
    "I"  # crc32c
)
assert CHUNK.size == 80

# §5 blob table entry head; the id follows, entries separated by one NUL.
BLOB_HEAD = struct.Struct("<II")  # readahead_offset, readahead_size
assert BLOB_HEAD.size == 8

# §6 extended blob table entry.
EXT_BLOB = struct.Struct(
    "<"
    "I"  # chunk_count
    "I"  # features
    "Q"  # uncompressed_size
    "Q"  # compressed_size
    "40s"  # reserved
)
assert EXT_BLOB.size == 64

U32 = struct.Struct("<I")
U64 = struct.Struct("<Q")


def align8(n: int) -> int:
    return (n + 7) & ~7


def pad8(data: bytes) -> bytes:
    return data + b"\0" * (align8(len(data)) - len(data))


def pad_to(data: bytes, size: int) -> bytes:
    return data + b"\0" * (size - len(data))
