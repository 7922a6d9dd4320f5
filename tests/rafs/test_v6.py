"""RAFS v6 reader: the nydus-image 2.2 vector, hand-made trees, and corrupt input.

Hand-made trees reuse the vector's superblocks, blob table, chunk table and its two file
inodes, and write a new root and new inodes behind them; their bytes are packed here from
../shared/formats/rafs-v6.md, independently of the reader's own record declarations.
"""

from __future__ import annotations

import hashlib
import random
import struct
from pathlib import Path

import pytest

from rafs._digest import Compressor, Digester
from rafs._errors import CorruptBootstrap, RafsError, UnsupportedFormat
from rafs._model import Bootstrap, Inode
from rafs._v6 import is_v6, load_v6

VECTORS = Path(__file__).resolve().parents[3] / "shared" / "vectors" / "nydus"
BLOB_ID = "be7d77eeb719f70884758d1aa800ed0fb09d701aaec469964e9d54325f0d5fef"
if not VECTORS.exists():
    pytest.skip(f"vectors not found at {VECTORS}", allow_module_level=True)
BOOT = (VECTORS / "bootstrap" / "rafs-v6-2.2.boot").read_bytes()
BLOB = (VECTORS / "blobs" / BLOB_ID).read_bytes()

META = 0x2000  # s_meta_blkaddr 2 x 4096
LIB_RS_NID = 133  # extended chunk-based inode of lib.rs (blob 0, CI 0, block 0)
SYNC_IO_NID = 136
FREE = 0x3160  # first free 32-byte slot after the vector's inodes (nid 139)
SB = 1024
EXT = 1152

REG, DIR, CHR, FIFO, LNK = 1, 2, 3, 5, 7  # dirent file types
PLAIN, INLINE, CHUNKED = 0, 2, 4  # data layouts


# --- packing hand-made records ----------------------------------------------------------


def extended(mode: int, size: int = 0, u: int = 0, layout: int = 0, **kw: int) -> bytes:
    return struct.pack(
        "<HHHHQIIIIQII16s",
        1 | layout << 1,
        kw.get("icount", 0),
        mode,
        0,
        size,
        u,
        kw.get("ino", 0),
        kw.get("uid", 0),
        kw.get("gid", 0),
        kw.get("mtime", 0),
        kw.get("nsec", 0),
        kw.get("nlink", 1),
        b"",
    )


def compact(mode: int, size: int = 0, u: int = 0, layout: int = 0, **kw: int) -> bytes:
    return struct.pack(
        "<HHHHIIIIHH4s",
        layout << 1,
        kw.get("icount", 0),
        mode,
        kw.get("nlink", 1),
        size,
        0,
        u,
        0,
        kw.get("uid", 0),
        kw.get("gid", 0),
        b"",
    )


def xattr_area(pairs: list[tuple[int, bytes, bytes]]) -> tuple[int, bytes]:
    """(i_xattr_icount, area bytes) for (name index, suffix, value) pairs."""
    area = struct.pack("<IB7s", 0, 0, b"")
    for index, suffix, value in pairs:
        entry = struct.pack("<BBH", len(suffix), index, len(value)) + suffix + value
        area += entry + bytes(-len(entry) % 4)
    return (len(area) - 12) // 4 + 1, area


def dirents(entries: list[tuple[bytes, int, int]], *, sort: bool = True) -> bytes:
    """A directory's data packed into blocks; the last block is not padded."""
    entries = sorted(entries) if sort else entries
    blocks: list[list[tuple[bytes, int, int]]] = [[]]
    for entry in entries:
        used = sum(12 + len(name) for name, _, _ in blocks[-1])
        if used + 12 + len(entry[0]) > 4096:
            blocks.append([])
        blocks[-1].append(entry)
    packed = [_dirent_block(block) for block in blocks]
    return b"".join(block.ljust(4096, b"\0") for block in packed[:-1]) + packed[-1]


def _dirent_block(entries: list[tuple[bytes, int, int]]) -> bytes:
    heads, names = b"", b""
    for name, nid, file_type in entries:
        heads += struct.pack("<QHBB", nid, 12 * len(entries) + len(names), file_type, 0)
        names += name
    return heads + names


def chunk_addr(blob: int, ci: int, block: int) -> bytes:
    return struct.pack("<HHI", ci & 0xFFFF, (blob + 1) | (ci >> 16) << 8, block)


class Image:
    """The vector with its root dropped: new inodes go at 32-byte slots from FREE."""

    def __init__(self) -> None:
        self.buf = bytearray(BOOT)
        self.buf[META:0x30A0] = bytes(0x30A0 - META)  # the old root and its tail
        self.buf[0x3148:0x4000] = bytes(0x4000 - 0x3148)
        self.cursor = FREE

    def reserve(self, size: int) -> int:
        """A nid for a record of `size` bytes that does not cross a 4 KiB block."""
        if self.cursor // 4096 != (self.cursor + size - 1) // 4096:
            self.cursor = -(-self.cursor // 4096) * 4096
        offset, self.cursor = self.cursor, -(-(self.cursor + size) // 32) * 32
        assert self.cursor <= 0x4000, "hand-made tree too large"
        return (offset - META) // 32

    def write(self, nid: int, record: bytes) -> None:
        offset = META + 32 * nid
        self.buf[offset : offset + len(record)] = record

    def add(self, record: bytes) -> int:
        nid = self.reserve(len(record))
        self.write(nid, record)
        return nid

    def reserve_dir(self, names: list[bytes]) -> int:
        return self.reserve(64 + len(dirents([(n, 0, 0) for n in [b".", b"..", *names]])))

    def write_dir(
        self, nid: int, parent: int, entries: list[tuple[bytes, int, int]], nlink: int = 2
    ) -> None:
        data = dirents([(b".", nid, DIR), (b"..", parent, DIR), *entries])
        self.write(nid, extended(0o40755, len(data), 0, INLINE, nlink=nlink) + data)

    def set_root(self, nid: int) -> None:
        struct.pack_into("<H", self.buf, SB + 14, nid)

    def append_blocks(self, data: bytes) -> int:
        """Append `data` in whole blocks at the end; return its first block number."""
        block = len(self.buf) // 4096
        self.buf += data + bytes(-len(data) % 4096)
        return block

    def bytes(self) -> bytes:
        return bytes(self.buf)


def with_root(entries: list[tuple[bytes, int, int]]) -> Image:
    """An image whose root (inline) holds `entries` (besides `.` and `..`)."""
    image = Image()
    root = image.reserve_dir([name for name, _, _ in entries])
    image.write_dir(root, root, entries)
    image.set_root(root)
    return image


def with_file(record: bytes, image: Image | None = None) -> Image:
    """An image whose root holds one entry `f` with the inode `record`."""
    image = image or Image()
    root = image.reserve_dir([b"f"])
    nid = image.add(record)
    image.write_dir(root, root, [(b"f", nid, REG)])
    image.set_root(root)
    return image


def file_with_xattrs(pairs: list[tuple[int, bytes, bytes]], nlink: int = 1) -> bytes:
    """A copy of lib.rs (blob 0, CI 0, block 0) carrying inline xattrs."""
    icount, area = xattr_area(pairs)
    head = extended(0o100640, 16931, 0x28, CHUNKED, icount=icount, nlink=nlink, uid=7, gid=8)
    body = head + area
    return body + bytes(-len(body) % 8) + chunk_addr(0, 0, 0)


def sample_tree() -> tuple[Image, dict[str, int]]:
    """root: chr fifo hard1 lib.rs link sub/{empty hard2}; hard1 = hard2 with xattrs."""
    image = Image()
    root = image.reserve_dir([b"chr", b"fifo", b"hard1", b"lib.rs", b"link", b"sub"])
    sub = image.reserve_dir([b"empty", b"hard2"])
    nids = {
        "chr": image.add(extended(0o20600, u=0x0501, mtime=5, nsec=6)),
        "fifo": image.add(compact(0o10644, uid=1000, gid=100)),
        "hard": image.add(
            file_with_xattrs([(1, b"mime", b"text/x-rust"), (2, b"", b"\x02\0\0\0")], nlink=2)
        ),
        "link": image.add(extended(0o120777, 10, 0, INLINE) + b"../lib.rs/"[:10]),
        "empty": image.add(compact(0o100600, 0, 0x28, CHUNKED)),
    }
    image.write_dir(sub, root, [(b"empty", nids["empty"], REG), (b"hard2", nids["hard"], REG)])
    image.write_dir(
        root,
        root,
        [
            (b"chr", nids["chr"], CHR),
            (b"fifo", nids["fifo"], FIFO),
            (b"hard1", nids["hard"], REG),
            (b"lib.rs", LIB_RS_NID, REG),
            (b"link", nids["link"], LNK),
            (b"sub", sub, DIR),
        ],
        nlink=3,
    )
    image.set_root(root)
    return image, {**nids, "root": root, "sub": sub}


def read_file(bootstrap: Bootstrap, inode: Inode) -> bytes:
    parts = []
    for chunk in inode.chunks:
        stored = BLOB[chunk.compressed_offset : chunk.compressed_offset + chunk.compressed_size]
        data = bootstrap.compressor.decompress(stored, chunk.uncompressed_size)
        assert bootstrap.digester.hash(data) == chunk.digest
        parts.append(data)
    return b"".join(parts)


def git_blob_sha1(content: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


# --- the vector -------------------------------------------------------------------------


def test_vector_image_settings() -> None:
    bootstrap = load_v6(BOOT)
    assert (bootstrap.version, bootstrap.chunk_size, bootstrap.flags) == (6, 0x100000, 0x194)
    assert bootstrap.compressor is Compressor.ZSTD
    assert bootstrap.digester is Digester.BLAKE3
    [blob] = bootstrap.blobs
    assert blob.blob_id == BLOB_ID
    assert (blob.chunk_count, blob.compressed_size, blob.uncompressed_size) == (2, 14554, 36864)
    assert blob.features == 0x70000021
    assert bootstrap.prefetch == []


def test_vector_tree() -> None:
    bootstrap = load_v6(BOOT)
    root = bootstrap.root
    assert (root.index, root.ino, root.parent, root.name) == (1, 1, 0, b"/")
    assert (root.mode, root.size, root.nlink, root.mtime) == (0o40755, 67, 2, 0)
    assert [child.name for child in bootstrap.children(root)] == [b"lib.rs", b"sync_io.rs"]
    assert root.children == (2, 3)
    lib = bootstrap.lookup("/lib.rs")
    assert (lib.index, lib.ino, lib.parent, lib.mode) == (2, 2, 1, 0o100644)
    assert (lib.size, lib.nlink, lib.uid, lib.gid) == (16931, 1, 0, 0)
    assert (lib.mtime, lib.mtime_nsec, lib.blocks) == (1676819553, 628661334, 34)
    assert bootstrap.lookup("/sync_io.rs").size == 13400


def test_vector_chunks_locate_the_blob_bytes() -> None:
    bootstrap = load_v6(BOOT)
    [lib_chunk] = bootstrap.lookup("/lib.rs").chunks
    [sync_chunk] = bootstrap.lookup("/sync_io.rs").chunks
    assert (lib_chunk.compressed_offset, lib_chunk.compressed_size) == (0, 4828)
    assert (sync_chunk.compressed_offset, sync_chunk.compressed_size) == (4828, 2974)
    assert (sync_chunk.uncompressed_offset, sync_chunk.index) == (20480, 1)
    assert all(
        c.compressed and c.file_offset == 0 and c.blob_index == 0 for c in (lib_chunk, sync_chunk)
    )
    for chunk in (lib_chunk, sync_chunk):  # the blob's own digest array (blob.digest at 12954)
        assert BLOB[12954 + 32 * chunk.index : 12986 + 32 * chunk.index] == chunk.digest


def test_vector_files_read_through_the_blob() -> None:
    bootstrap = load_v6(BOOT)
    lib = read_file(bootstrap, bootstrap.lookup("/lib.rs"))
    sync_io = read_file(bootstrap, bootstrap.lookup("/sync_io.rs"))
    assert (len(lib), len(sync_io)) == (16931, 13400)
    assert git_blob_sha1(lib).startswith("68ef5bc3")
    assert git_blob_sha1(sync_io).startswith("e91f7e83")


def test_is_v6() -> None:
    v5 = (VECTORS / "repeatable" / "sha256-nocompress-repeatable").read_bytes()
    assert is_v6(BOOT)
    assert not is_v6(v5)
    assert not is_v6(b"")
    assert not is_v6(BOOT[:1027])
    assert not is_v6(bytes(8192))


# --- hand-made trees --------------------------------------------------------------------


def test_hand_made_tree_numbering_and_hardlinks() -> None:
    image, _ = sample_tree()
    bootstrap = load_v6(image.bytes())
    names = [(path, inode.index) for path, inode in bootstrap.walk()]
    assert names == [
        (b"/", 1),
        (b"/chr", 2),
        (b"/fifo", 3),
        (b"/hard1", 4),
        (b"/lib.rs", 5),
        (b"/link", 6),
        (b"/sub", 7),
        (b"/sub/empty", 8),
        (b"/sub/hard2", 9),
    ]
    hard1, hard2 = bootstrap.lookup("/hard1"), bootstrap.lookup("/sub/hard2")
    assert hard1.ino == hard2.ino == 4
    assert (hard1.nlink, hard2.parent, bootstrap.lookup("/sub").parent) == (2, 7, 1)
    assert bootstrap.root.child_index == 2
    assert bootstrap.lookup("/sub").child_index == 8


def test_hand_made_special_files() -> None:
    image, _ = sample_tree()
    bootstrap = load_v6(image.bytes())
    char = bootstrap.lookup("/chr")
    assert (char.mode, char.rdev, char.mtime, char.mtime_nsec) == (0o20600, 0x0501, 5, 6)
    fifo = bootstrap.lookup("/fifo")
    assert (fifo.mode, fifo.uid, fifo.gid, fifo.rdev, fifo.mtime) == (0o10644, 1000, 100, 0, 0)
    link = bootstrap.lookup("/link")
    assert (link.symlink, link.size, link.is_symlink) == (b"../lib.rs/", 10, True)
    empty = bootstrap.lookup("/sub/empty")
    assert (empty.size, empty.chunks) == (0, ())


def test_hand_made_xattrs_and_chunks_after_them() -> None:
    image, _ = sample_tree()
    bootstrap = load_v6(image.bytes())
    hard = bootstrap.lookup("/sub/hard2")
    assert hard.xattrs == {
        b"user.mime": b"text/x-rust",
        b"system.posix_acl_access": b"\x02\0\0\0",
    }
    assert (hard.uid, hard.gid, hard.mode) == (7, 8, 0o100640)
    assert git_blob_sha1(read_file(bootstrap, hard)).startswith("68ef5bc3")


def test_flat_plain_directory_over_several_blocks() -> None:
    names = [b"-dash", *(b"f%04d" % i for i in range(500))]  # "-dash" sorts before "."
    image = Image()
    root = image.reserve(64)
    data = dirents([(b".", root, DIR), (b"..", root, DIR), *((n, LIB_RS_NID, REG) for n in names)])
    block = image.append_blocks(data)
    image.write(root, extended(0o40755, len(data), block, PLAIN, nlink=2))
    image.set_root(root)
    bootstrap = load_v6(image.bytes())
    assert len(data) > 2 * 4096
    assert [child.name for child in bootstrap.children(bootstrap.root)] == sorted(names)
    assert {child.ino for child in bootstrap.children(bootstrap.root)} == {2}


def test_multi_chunk_file_and_24_bit_ci_index() -> None:
    image = Image()
    for offset in (EXT + 20, 0x1000 + 68):
        struct.pack_into("<I", image.buf, offset, 8192)  # s_chunk_size, blob chunk_size
    struct.pack_into("<I", image.buf, 0x1000 + 72, 0x10006)  # blob chunk_count
    chunks = [(0, 0, 8192, 0), (1, 2, 8192, 4000), (0x10005, 4, 547, 9000)]  # ci, block, size, c
    table = b"".join(
        struct.pack(
            "<32sIIIIQQQII", bytes([n]) * 32, 0, 1, 100, size, c_off, block * 4096, 0, ci, 0
        )
        for n, (ci, block, size, c_off) in enumerate(chunks)
    )
    image.buf[0x4000 : 0x4000 + len(table)] = table
    struct.pack_into("<Q", image.buf, EXT + 32, len(table))  # s_chunk_table_size
    indexes = b"".join(chunk_addr(0, ci, block) for ci, block, _, _ in chunks)
    record = extended(0o100644, 16931, 0x28, CHUNKED) + indexes
    bootstrap = load_v6(with_file(record, image).bytes())
    assert [
        (c.file_offset, c.index, c.uncompressed_offset, c.uncompressed_size, c.digest[0])
        for c in bootstrap.lookup("/f").chunks
    ] == [(0, 0, 0, 8192, 0), (8192, 1, 8192, 8192, 1), (16384, 0x10005, 16384, 547, 2)]


def test_unused_block_address_of_an_inline_directory_is_ignored() -> None:
    assert load_v6(patched(0x3000 + 16, "I", 0xFFFFFFFF)).root.size == 67


def test_prefetch_table_maps_nids_to_inos() -> None:
    image = Image()
    image.buf[:] = BOOT
    struct.pack_into("<II", image.buf, 0x1100, SYNC_IO_NID, 128)
    struct.pack_into("<Q", image.buf, EXT + 40, 0x1100)
    struct.pack_into("<I", image.buf, EXT + 48, 8)
    assert load_v6(image.bytes()).prefetch == [3, 1]
    struct.pack_into("<I", image.buf, 0x1100, 999)
    with pytest.raises(CorruptBootstrap, match="prefetch"):
        load_v6(image.bytes())


# --- corrupt and unsupported input --------------------------------------------------------


def patched(offset: int, fmt: str, value: int, data: bytes = BOOT) -> bytes:
    buf = bytearray(data)
    struct.pack_into("<" + fmt, buf, offset, value)
    return bytes(buf)


@pytest.mark.parametrize(
    ("offset", "fmt", "value", "what"),
    [
        (SB, "I", 0xE0F5E1E3, "s_magic"),
        (SB + 80, "I", 0x0D, "s_feature_incompat"),
        (SB + 14, "H", 0xFFFF, "inode of nid 65535"),
        (SB + 86, "H", 0xFFFF, "s_extra_devices"),
        (EXT, "Q", 0x1D4, "compression"),
        (EXT + 16, "I", 0xFFFFFF00, "s_blob_table_offset"),
        (EXT + 20, "I", 3000, "s_chunk_size"),
        (EXT + 32, "Q", 2**63, "s_chunk_table_offset"),
        (EXT + 32, "Q", 150, "s_chunk_table_size"),
        (0x1000 + 64, "I", 1, "blob_index"),
        (0x1000 + 72, "I", 1, "chunk index"),
        (0x1000, "B", ord("/"), "blob_id"),
        (0x1000 + 216, "I", 7, "cipher_algo"),
        (0x580, "B", ord("0"), "device slot blob_id"),
        (0x3000, "H", 0x25, "i_format"),
        (0x3000 + 4, "H", 0o20644, "root i_mode"),
        (0x3000 + 8, "Q", 2**64 - 1, "data of nid 128"),
        (0x3073, "B", ord("z"), "dirent name out of order"),
        (0x3040, "Q", 127, "e_nid of '.'"),
        (0x3058, "Q", 0x3FFFFFFF, "inode of nid"),
        (0x3058 + 10, "B", 2, "e_file_type"),
        (0x30A0 + 8, "Q", 2**64 - 1, "chunk indexes of nid 133"),
        (0x30E0, "H", 7, "not in the chunk table"),
        (0x30E0 + 2, "H", 0, "device id"),
        (0x30A0 + 16, "I", 0x128, "chunk format"),
        (0x30A0 + 44, "I", 0, "i_nlink"),
        (0x4000 + 32, "I", 1, "chunk blob_index"),
        (0x4000 + 48, "Q", 2**40, "chunk compressed_offset"),
        (0x4000 + 44, "I", 13401, "uncompressed_size"),
    ],
)
def test_forged_field_is_named(offset: int, fmt: str, value: int, what: str) -> None:
    with pytest.raises(CorruptBootstrap, match=what):
        load_v6(patched(offset, fmt, value))


@pytest.mark.parametrize(
    ("offset", "fmt", "value"),
    [
        (EXT, "Q", 0x394),  # TARTFS_MODE
        (SB + 12, "B", 9),  # 512-byte blocks
        (0x1000 + 84, "I", 0x70000029),  # zran blob
        (0x1000 + 76, "I", 1),  # the blob says lz4, the bootstrap zstd
        (0x30A0, "H", 0x3),  # EROFS compressed layout
        (0x4000 + 36, "I", 0x5),  # encrypted chunk
    ],
)
def test_unsupported_features(offset: int, fmt: str, value: int) -> None:
    with pytest.raises(UnsupportedFormat):
        load_v6(patched(offset, fmt, value))


def test_truncated_everywhere() -> None:
    cuts = sorted({*range(0, len(BOOT), 97), *range(4096, len(BOOT), 4096), 1024, 1100, 1152})
    for cut in cuts:
        with pytest.raises(CorruptBootstrap):
            load_v6(BOOT[:cut])


def test_bad_names_rejected() -> None:
    for name in (b"a/b", b"a\0b"):
        image = with_root([(name, LIB_RS_NID, REG), (b"z", SYNC_IO_NID, REG)])
        with pytest.raises(CorruptBootstrap, match="dirent name"):
            load_v6(image.bytes())


def test_unsorted_directory_rejected() -> None:
    image = Image()
    root = image.reserve_dir([b"a", b"b"])
    entries = [
        (b".", root, DIR),
        (b"..", root, DIR),
        (b"b", LIB_RS_NID, REG),
        (b"a", SYNC_IO_NID, REG),
    ]
    data = dirents(entries, sort=False)
    image.write(root, extended(0o40755, len(data), 0, INLINE, nlink=2) + data)
    image.set_root(root)
    with pytest.raises(CorruptBootstrap, match="out of order"):
        load_v6(image.bytes())


def test_directory_cycle_rejected() -> None:
    image = Image()
    root = image.reserve_dir([b"sub"])
    sub = image.reserve_dir([b"loop"])
    image.write_dir(sub, root, [(b"loop", root, DIR)])
    image.write_dir(root, root, [(b"sub", sub, DIR)], nlink=3)
    image.set_root(root)
    with pytest.raises(CorruptBootstrap, match="cycle"):
        load_v6(image.bytes())


def test_wrong_parent_rejected() -> None:
    image = Image()
    root = image.reserve_dir([b"sub"])
    sub = image.reserve_dir([])
    image.write_dir(sub, sub, [])
    image.write_dir(root, root, [(b"sub", sub, DIR)], nlink=3)
    image.set_root(root)
    with pytest.raises(CorruptBootstrap, match=r"e_nid of '\.\.'"):
        load_v6(image.bytes())


@pytest.mark.parametrize(
    ("pairs", "what"),
    [
        ([(9, b"x", b"1")], "e_name_index"),
        ([(1, b"", b"1")], "xattr name"),
        ([(2, b"x", b"1")], "xattr name"),
        ([(1, b"a", b"1"), (1, b"a", b"2")], "duplicate xattr"),
    ],
)
def test_bad_xattrs_rejected(pairs: list[tuple[int, bytes, bytes]], what: str) -> None:
    with pytest.raises(CorruptBootstrap, match=what):
        load_v6(with_file(file_with_xattrs(pairs)).bytes())


def test_xattr_value_past_its_area_rejected() -> None:
    record = bytearray(file_with_xattrs([(1, b"a", b"12345678")]))
    struct.pack_into("<H", record, 64 + 12 + 2, 0x4000)  # e_value_size
    with pytest.raises(CorruptBootstrap, match="e_value_size"):
        load_v6(with_file(bytes(record)).bytes())


def test_file_size_beyond_its_chunk_indexes_rejected() -> None:
    record = extended(0o100644, 2**40, 0x28, CHUNKED) + chunk_addr(0, 0, 0)
    with pytest.raises(CorruptBootstrap, match="chunk indexes"):
        load_v6(with_file(record).bytes())


def _mutate(data: bytes, rng: random.Random) -> bytes:
    """Overwrite a byte or an aligned word of a random, mostly meaningful, place."""
    buf = bytearray(data)
    region = rng.choice(
        [(SB, SB + 128), (EXT, EXT + 64), (0x580, 0x600), (0x1000, 0x1100)] + [(META, 0x4100)] * 4
    )
    width = rng.choice([1, 2, 4, 8])
    offset = rng.randrange(*region) // width * width
    value = rng.choice([0, 1, 0xFF, 2 ** (8 * width) - 1, rng.getrandbits(8 * width)])
    buf[offset : offset + width] = value.to_bytes(width, "little")
    return bytes(buf)


def test_mutated_bootstraps_raise_only_rafs_errors() -> None:
    rng = random.Random(0x6E7964)
    seeds = [BOOT, sample_tree()[0].bytes()]
    loaded = failed = 0
    for n in range(600):
        data = _mutate(seeds[n % 2], rng)
        if rng.random() < 0.3:
            data = _mutate(data, rng)
        try:
            load_v6(data)
            loaded += 1
        except RafsError:
            failed += 1
    assert loaded and failed  # both outcomes occur, so the loop exercises the checks
