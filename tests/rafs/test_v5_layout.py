"""Golden bytes for each v5 record, and the loader's refusal of each kind of corruption."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from rafs import CorruptBootstrap, RafsError, UnsupportedFormat
from rafs import _v5layout as L
from rafs._model import ChunkInfo, Inode
from rafs._v5 import load_v5, parse_superblock
from rafs._v5write import encode_inode, encode_xattr_pairs

VECTOR = (
    Path(__file__).resolve().parents[3]
    / "shared/vectors/nydus/repeatable/sha256-nocompress-repeatable"
)
pytestmark = pytest.mark.skipif(not VECTOR.exists(), reason=f"vector not found: {VECTOR}")


def vector() -> bytearray:
    return bytearray(VECTOR.read_bytes())


def record_offset(data: bytes, index: int) -> int:
    return int(struct.unpack_from("<I", data, 8192 + 4 * (index - 1))[0]) << 3


def test_record_sizes_match_the_format() -> None:
    assert (L.SUPERBLOCK.size, L.INODE.size, L.CHUNK.size, L.EXT_BLOB.size) == (80, 128, 80, 64)


def test_superblock_fields_of_the_vector() -> None:
    sb = parse_superblock(bytes(vector()))
    assert (sb.chunk_size, sb.flags, sb.inodes_count) == (0x100000, 0x9, 51)
    assert (sb.inode_table_offset, sb.prefetch_table_offset, sb.blob_table_offset) == (
        8192,
        8408,
        8408,
    )
    assert (sb.inode_table_entries, sb.blob_table_size, sb.ext_blob_entries) == (54, 72, 1)
    assert sb.ext_blob_offset == 8480


def test_inode_record_golden_bytes() -> None:
    inode = Inode(
        index=3,
        ino=3,
        parent=1,
        name=b"abc",
        mode=0o100644,
        uid=1,
        gid=2,
        size=5,
        blocks=1,
        nlink=1,
        mtime=0x0102030405,
        mtime_nsec=7,
        digest=bytes(range(32)),
        chunks=(ChunkInfo(b"\xaa" * 32, 0, 1, 9, 5, 16, 32, 0, 4, 0),),
    )
    raw = encode_inode(inode)
    expected = (
        bytes(range(32))
        + (1).to_bytes(8, "little")  # parent
        + (3).to_bytes(8, "little")  # ino
        + (1).to_bytes(4, "little")
        + (2).to_bytes(4, "little")
        + bytes(4)  # uid gid projid
        + (0o100644).to_bytes(4, "little")
        + (5).to_bytes(8, "little")
        + (1).to_bytes(8, "little")
        + bytes(8)  # size blocks flags
        + (1).to_bytes(4, "little")
        + bytes(4)
        + (1).to_bytes(4, "little")  # nlink ci chunks
        + (3).to_bytes(2, "little")
        + bytes(2)
        + bytes(4)  # name, symlink, rdev
        + (7).to_bytes(4, "little")
        + (0x0102030405).to_bytes(8, "little")
        + bytes(8)
        + b"abc"
        + bytes(5)
        + b"\xaa" * 32
        + bytes(4)
        + (1).to_bytes(4, "little")
        + (9).to_bytes(4, "little")
        + (5).to_bytes(4, "little")
        + (16).to_bytes(8, "little")
        + (32).to_bytes(8, "little")
        + bytes(8)
        + (4).to_bytes(4, "little")
        + bytes(4)
    )
    assert raw == expected and len(raw) == 128 + 8 + 80


def test_symlink_and_xattr_record_golden_bytes() -> None:
    inode = Inode(
        index=2,
        ino=2,
        parent=1,
        name=b"l",
        mode=0o120777,
        symlink=b"target",
        xattrs={b"user.b": b"2", b"user.a": b"1"},
    )
    raw = encode_inode(inode)
    flags = struct.unpack_from("<Q", raw, 80)[0]
    assert flags == L.INODE_SYMLINK | L.INODE_XATTR
    pairs = encode_xattr_pairs(inode.xattrs)
    assert pairs == b"\x08\x00\x00\x00user.a\x001\x08\x00\x00\x00user.b\x002"
    tail = raw[128:]
    assert tail == b"l" + bytes(7) + b"target" + bytes(2) + (24).to_bytes(8, "little") + pairs


def test_records_reload_to_the_same_values() -> None:
    data = bytes(vector())
    boot = load_v5(data)
    for index, inode in boot.inodes.items():
        start = record_offset(data, index)
        raw = encode_inode(inode)
        assert data[start : start + len(raw)] == raw, index


def patched(offset: int, fmt: str, value: int) -> bytes:
    data = vector()
    struct.pack_into(fmt, data, offset, value)
    return bytes(data)


ROOT = 8544  # offset of the root record in the vector (index 1)


@pytest.mark.parametrize(
    ("offset", "fmt", "value", "what"),
    [
        (0, "<I", 0x12345678, "s_magic"),
        (8, "<I", 4096, "s_sb_size"),
        (12, "<I", 3000, "chunk size"),
        (12, "<I", 1 << 25, "chunk size"),
        (16, "<Q", 1 << 40, "s_flags unknown bits"),
        (32, "<Q", 9004, "s_inode_table_offset"),
        (56, "<I", 0xFFFFFFFF, "s_inode_table_offset"),
        (64, "<I", 1 << 30, "s_blob_table_offset"),
        (68, "<I", 1 << 28, "s_extended_blob_table_offset"),
        (8192, "<I", 5, "inode table entry 1"),
        (8192, "<I", 1 << 28, "inode table entry 1"),
        (ROOT + 92, "<I", 1, "i_child_index/count of index 1"),
        (ROOT + 96, "<I", 1000, "i_child_index/count of index 1"),
        (ROOT + 100, "<H", 0, "i_name_size of index 1"),
        (ROOT + 80, "<Q", 0x100, "i_flags of index 1"),
    ],
)
def test_each_forged_field_is_named(offset: int, fmt: str, value: int, what: str) -> None:
    with pytest.raises(CorruptBootstrap, match=what.replace("(", r"\(").replace(")", r"\)")):
        load_v5(patched(offset, fmt, value))


def test_version_other_than_v5_is_unsupported() -> None:
    with pytest.raises(UnsupportedFormat, match="0x600"):
        load_v5(patched(4, "<I", 0x600))


def test_shared_children_are_refused_as_a_cycle() -> None:
    data = vector()
    hardlink_test = record_offset(data, 2)  # /hardlink-test, children 5..6
    normal = record_offset(data, 3)  # /normal-file-test, children 7..9
    child_index = struct.unpack_from("<I", data, hardlink_test + 92)[0]
    struct.pack_into("<I", data, normal + 92, child_index)
    with pytest.raises(CorruptBootstrap):
        load_v5(bytes(data))


@pytest.mark.parametrize("bad", [b"/", b"\0"])
def test_names_with_slash_or_nul_are_refused(bad: bytes) -> None:
    data = vector()
    start = record_offset(data, 2)  # "hardlink-test"
    data[start + 128 + 4 : start + 128 + 5] = bad
    with pytest.raises(CorruptBootstrap, match="name of index 2"):
        load_v5(bytes(data))


def test_chunk_pointing_at_a_missing_blob_is_refused() -> None:
    data = vector()
    start = record_offset(data, 5)  # /hardlink-test/foo, 1 chunk after an 8-byte name
    struct.pack_into("<I", data, start + 128 + 8 + 32, 3)
    with pytest.raises(CorruptBootstrap, match="blob_index of chunk 0 of index 5"):
        load_v5(bytes(data))


def test_chunk_count_must_match_the_size() -> None:
    data = vector()
    start = record_offset(data, 5)
    struct.pack_into("<Q", data, start + 64, 5 << 20)  # i_size 5 MiB with one chunk record
    with pytest.raises(CorruptBootstrap, match="chunk count of index 5"):
        load_v5(bytes(data))


def test_forged_huge_chunk_count_is_bounded_by_the_file() -> None:
    data = vector()
    start = record_offset(data, 5)
    struct.pack_into("<Q", data, start + 64, (1 << 20) * 0xFFFFFFF)
    struct.pack_into("<I", data, start + 96, 0xFFFFFFF)
    with pytest.raises(CorruptBootstrap, match="chunk records runs past the end"):
        load_v5(bytes(data))


def test_all_errors_are_rafs_errors() -> None:
    assert issubclass(CorruptBootstrap, RafsError) and issubclass(UnsupportedFormat, RafsError)
