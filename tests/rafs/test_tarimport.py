"""Tar layers and OCI layouts into the builder's input tree.

Oracles are independent where one exists: GNU tar extracts the Nydus vectors, umoci
unpacks the OCI image it made, and the property test compares against the tree it wrote.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import os
import random
import re
import stat
import subprocess
import tarfile
import tracemalloc
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rafs import BuildError, ChunkInfo, SourceEntry
from rafs._source import new_root
from rafs._tarimport import (
    apply_layer,
    import_oci_layout,
    import_tar,
    is_oci_layout,
    open_layer,
)

VECTORS = Path("/work/shared/vectors/nydus/tar")
CHUNK = 64 * 1024

# ---------------------------------------------------------------- a sink that remembers


class MemorySink:
    """Reads each file in small pieces, keeps chunk bytes by digest."""

    def __init__(self) -> None:
        self.chunks: dict[bytes, bytes] = {}
        self.files: list[bytes] = []

    def add_file(self, stream: BinaryIO, size: int) -> tuple[ChunkInfo, ...]:
        data = bytearray()
        while len(data) < size:
            piece = stream.read(min(7919, size - len(data)))
            assert piece, f"stream ended at {len(data)} of {size} bytes"
            data += piece
        self.files.append(bytes(data))
        return tuple(self._record(bytes(data[o : o + CHUNK]), o) for o in range(0, size, CHUNK))

    def _record(self, piece: bytes, file_offset: int) -> ChunkInfo:
        digest = hashlib.sha256(piece).digest()
        self.chunks.setdefault(digest, piece)
        n = len(piece)
        return ChunkInfo(digest, 0, 0, n, n, 0, 0, file_offset, len(self.chunks) - 1)

    def content(self, entry: SourceEntry) -> bytes:
        assert entry.chunks is not None, entry.name
        return b"".join(self.chunks[c.digest] for c in entry.chunks)

    def stored(self, needle: bytes) -> bool:
        return any(needle in f for f in self.files)


class HashingSink:
    """Keeps nothing but a running count: for measuring memory."""

    def __init__(self) -> None:
        self.total = 0

    def add_file(self, stream: BinaryIO, size: int) -> tuple[ChunkInfo, ...]:
        while piece := stream.read(CHUNK):
            self.total += len(piece)
        return ()


# ---------------------------------------------------------------- building tars

Member = tuple[tarfile.TarInfo, bytes | None]


def _info(name: str, kind: bytes, mode: int, **fields: object) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.mtime = kind, mode, 1_700_000_000
    for key, value in fields.items():
        setattr(info, key, value)
    return info


def reg(name: str, data: bytes = b"", mode: int = 0o644, **fields: object) -> Member:
    return _info(name, tarfile.REGTYPE, mode, size=len(data), **fields), data


def dir_(name: str, mode: int = 0o755, **fields: object) -> Member:
    return _info(name, tarfile.DIRTYPE, mode, **fields), None


def sym(name: str, target: str) -> Member:
    return _info(name, tarfile.SYMTYPE, 0o777, linkname=target), None


def hlink(name: str, target: str) -> Member:
    return _info(name, tarfile.LNKTYPE, 0o644, linkname=target), None


def dev(name: str, kind: bytes, major: int, minor: int) -> Member:
    return _info(name, kind, 0o600, devmajor=major, devminor=minor), None


def fifo(name: str) -> Member:
    return _info(name, tarfile.FIFOTYPE, 0o644), None


def tar_bytes(*members: Member, fmt: int = tarfile.PAX_FORMAT) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=fmt) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return out.getvalue()


def layers(*tars: bytes, sink: MemorySink | None = None) -> tuple[SourceEntry, MemorySink]:
    sink = sink if sink is not None else MemorySink()
    root = new_root()
    for data in tars:
        apply_layer(root, io.BytesIO(data), sink)
    return root, sink


def paths(root: SourceEntry) -> set[bytes]:
    return {p for p, _ in root.walk()}


def entry(root: SourceEntry, path: bytes) -> SourceEntry:
    return dict(root.walk())[path]


def summary(root: SourceEntry, sink: MemorySink) -> dict[bytes, tuple[object, ...]]:
    """Per path (root excluded): type, permissions, owner, payload, mtime."""
    out: dict[bytes, tuple[object, ...]] = {}
    for path, e in root.walk():
        if path != b"/":
            out[path] = (stat.S_IFMT(e.mode), stat.S_IMODE(e.mode), e.uid, e.gid, _payload(e, sink))
    return out


def _payload(e: SourceEntry, sink: MemorySink) -> object:
    if e.is_reg:
        return sink.content(e)
    if stat.S_ISLNK(e.mode):
        return e.symlink
    if stat.S_ISCHR(e.mode) or stat.S_ISBLK(e.mode):
        return e.rdev
    return None


def disk_summary(top: Path) -> dict[bytes, tuple[object, ...]]:
    out: dict[bytes, tuple[object, ...]] = {}
    for path, st_ in _disk_walk(top):
        out[path] = (
            stat.S_IFMT(st_.st_mode),
            stat.S_IMODE(st_.st_mode),
            st_.st_uid,
            st_.st_gid,
            _disk_payload(top, path, st_),
        )
    return out


def _disk_walk(top: Path) -> Iterator[tuple[bytes, os.stat_result]]:
    base = os.fsencode(top)
    for dirpath, dirnames, filenames in os.walk(base):
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            yield full[len(base) :], os.lstat(full)


def _disk_payload(top: Path, path: bytes, st_: os.stat_result) -> object:
    full = os.fsencode(top) + path
    if stat.S_ISREG(st_.st_mode):
        return Path(os.fsdecode(full)).read_bytes()
    if stat.S_ISLNK(st_.st_mode):
        return os.readlink(full)
    if stat.S_ISCHR(st_.st_mode) or stat.S_ISBLK(st_.st_mode):
        return st_.st_rdev
    return None


def link_groups(root: SourceEntry) -> set[frozenset[bytes]]:
    groups: dict[int, set[bytes]] = {}
    for path, e in root.walk():
        if e.is_reg:
            groups.setdefault(id(e.link_key) if e.link_key else id(e), set()).add(path)
    return {frozenset(g) for g in groups.values() if len(g) > 1}


def disk_link_groups(top: Path) -> set[frozenset[bytes]]:
    groups: dict[int, set[bytes]] = {}
    for path, st_ in _disk_walk(top):
        if stat.S_ISREG(st_.st_mode):
            groups.setdefault(st_.st_ino, set()).add(path)
    return {frozenset(g) for g in groups.values() if len(g) > 1}


def gnu_extract(tar: Path, into: Path) -> Path:
    into.mkdir()
    subprocess.run(["tar", "-xf", str(tar), "-C", str(into), "--numeric-owner"], check=True)
    return into


# ---------------------------------------------------------------- the Nydus vectors


@pytest.mark.parametrize("name", ["all-entry-type.tar", "all-entry-type-macos.tar"])
def test_vector_matches_gnu_tar_extraction(name: str, tmp_path: Path) -> None:
    sink = MemorySink()
    root = import_tar(VECTORS / name, sink)
    disk = gnu_extract(VECTORS / name, tmp_path / "x")
    assert summary(root, sink) == disk_summary(disk)
    assert link_groups(root) == disk_link_groups(disk)


def test_vector_entry_kinds() -> None:
    sink = MemorySink()
    root = import_tar(VECTORS / "all-entry-type.tar", sink)
    names = [b"dir1/dir3/hardlink1.txt", b"dir1/dir3/xfile.txt", b"dir1/hardlink2.txt"]
    group = [entry(root, b"/tar/" + n) for n in [*names, b"dir2/hardlink3.txt"]]
    assert group[0].link_key is not None
    assert all(e.link_key is group[0].link_key and e.chunks == group[0].chunks for e in group)
    assert all(e.size == 15 and e.mode == stat.S_IFREG | 0o644 for e in group)
    link = entry(root, b"/tar/dir2/symlink1.txt")
    assert link.mode == stat.S_IFLNK | 0o777  # the header says 0755; Linux shows 0777
    assert link.symlink == b"../dir1/dir3/file1.txt"
    assert entry(root, b"/tar/dir1/dir3").mode == stat.S_IFDIR | 0o755
    assert len(sink.files) == 1  # one inode, stored once


def test_vector_macos_pax_xattrs_and_nanoseconds() -> None:
    root = import_tar(VECTORS / "all-entry-type-macos.tar", MemorySink())
    dir3 = entry(root, b"/tar/dir1/dir3")
    assert dir3.xattrs == {b"dir": b"value"}
    assert (dir3.mtime, dir3.mtime_nsec) == (1665628806, 107725102)
    link = entry(root, b"/tar/dir2/symlink1.txt")
    assert link.xattrs == {b"symlink": b"value"} and link.mtime_nsec == 476810967
    first = entry(root, b"/tar/dir1/hardlink2.txt")
    for other in [b"/tar/dir1/dir3/xfile.txt", b"/tar/dir2/hardlink3.txt"]:
        e = entry(root, other)
        assert e.link_key is first.link_key is not None
        assert e.xattrs == {b"hardlink3": b"value"}
    long = [p for p in paths(root) if p.startswith(b"/tar/dir1/dir3/this_is_really")]
    assert len(long) == 1 and len(long[0]) > 200


# ---------------------------------------------------------------- entry kinds and metadata


def test_every_kind_and_its_metadata() -> None:
    xattr_pax = {
        "SCHILY.xattr.user.text": "plain",
        "SCHILY.xattr.security.capability": b"\x01\x00\xff\xfe".decode("utf-8", "surrogateescape"),
        "LIBARCHIVE.xattr.user.a%3Db": base64.b64encode(b"\x00bin\xff").decode().rstrip("="),
        "mtime": "1700000001.000000042",
    }
    data = tar_bytes(
        reg("bin/su", b"#!", mode=0o4755, uid=7, gid=8, pax_headers=xattr_pax),
        dir_("tmp", mode=0o1777),
        sym("link", "../../../../etc/passwd"),
        dev("dev/null", tarfile.CHRTYPE, 1, 3),
        dev("dev/sda", tarfile.BLKTYPE, 8, 0),
        fifo("run/pipe"),
    )
    root, sink = layers(data)
    su = entry(root, b"/bin/su")
    assert su.mode == stat.S_IFREG | 0o4755 and (su.uid, su.gid) == (7, 8)
    assert (su.mtime, su.mtime_nsec) == (1700000001, 42)
    assert su.xattrs == {
        b"user.text": b"plain",
        b"security.capability": b"\x01\x00\xff\xfe",
        b"user.a=b": b"\x00bin\xff",
    }
    assert sink.content(su) == b"#!" and su.path is None and su.size == 2
    assert entry(root, b"/tmp").mode == stat.S_IFDIR | 0o1777
    assert entry(root, b"/link").symlink == b"../../../../etc/passwd"
    assert entry(root, b"/dev/null").mode == stat.S_IFCHR | 0o600
    assert entry(root, b"/dev/null").rdev == os.makedev(1, 3)
    assert entry(root, b"/dev/sda").mode == stat.S_IFBLK | 0o600
    assert entry(root, b"/dev/sda").rdev == os.makedev(8, 0)
    assert entry(root, b"/run/pipe").mode == stat.S_IFIFO | 0o644
    assert entry(root, b"/run").mode == stat.S_IFDIR | 0o755  # made: not in the tar


def test_names_are_normalised() -> None:
    data = tar_bytes(
        reg("./a/b", b"1"), reg("c//d///e", b"2"), dir_("f/"), reg("/abs/g", b"3"), reg("h/../i")
    )
    root, _ = layers(data)
    assert paths(root) == {
        b"/",
        b"/a",
        b"/a/b",
        b"/c",
        b"/c/d",
        b"/c/d/e",
        b"/f",
        b"/abs",
        b"/abs/g",
        b"/i",
    }


def test_root_member_sets_root_metadata() -> None:
    root, _ = layers(tar_bytes(dir_(".", mode=0o700, uid=5), reg("./x")))
    assert root.mode == stat.S_IFDIR | 0o700 and root.uid == 5 and root.name == b"/"


def test_sparse_file_holes_read_as_zeros(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    with open(src / "f", "wb") as f:
        f.truncate(3 << 20)
        f.seek(1 << 20)
        f.write(b"hello")
        f.seek(0, os.SEEK_END)
        f.write(b"end")
    expected = (src / "f").read_bytes()
    for fmt in ["gnu", "posix"]:
        tar = tmp_path / f"{fmt}.tar"
        subprocess.run(
            ["tar", "--sparse", f"--format={fmt}", "-cf", str(tar), "-C", str(src), "f"],
            check=True,
        )
        sink = MemorySink()
        f_entry = entry(import_tar(tar, sink), b"/f")
        assert f_entry.size == len(expected) and sink.content(f_entry) == expected


def test_hardlink_to_a_lower_layer_shares_key_and_chunks() -> None:
    root, _ = layers(tar_bytes(reg("f", b"data")), tar_bytes(hlink("g", "./f")))
    f, g = entry(root, b"/f"), entry(root, b"/g")
    assert f.link_key is g.link_key is not None and f.chunks == g.chunks


def test_hardlink_to_a_symlink_copies_it() -> None:
    root, _ = layers(tar_bytes(sym("s", "t"), hlink("h", "s")))
    assert entry(root, b"/h").symlink == b"t" and entry(root, b"/h").link_key is None


def test_keep_skips_content() -> None:
    sink, root = MemorySink(), new_root()
    data = tar_bytes(reg("a", b"kept"), reg("d/b", b"skipped"))
    apply_layer(root, io.BytesIO(data), sink, keep=lambda p: p != b"/d/b")
    assert entry(root, b"/d/b").chunks is None and entry(root, b"/d/b").size == 7
    assert sink.files == [b"kept"]


# ---------------------------------------------------------------- refused input

ESCAPES = [
    ("escape-dotdot", [reg("../x")], "'../x'"),
    ("escape-deep", [reg("a/../../x")], "a/../../x"),
    ("escape-abs-dotdot", [reg("/../x")], "/../x"),
    ("hardlink-escape", [hlink("p", "../../etc/passwd")], "../../etc/passwd"),
    ("hardlink-missing", [hlink("p", "nothing")], "'nothing'"),
    ("hardlink-to-dir", [dir_("d"), hlink("p", "d")], "a directory"),
    ("nul-name", [reg("ab", pax_headers={"path": "a\x00b"})], "NUL"),
    ("parent-is-file", [reg("f"), reg("f/x")], "'f/x'"),
    ("parent-is-symlink", [sym("l", "/d"), reg("l/x")], "'l/x'"),
    ("inside-whiteout", [reg(".wh.a/b")], ".wh.a/b"),
    ("whiteout-of-nothing", [reg(".wh.")], "whiteout"),
    ("root-not-dir", [reg("./")], "root"),
    ("bad-base64", [reg("x", pax_headers={"LIBARCHIVE.xattr.user.x": "!!!"})], "base64"),
    ("bad-pax-mtime", [reg("x", pax_headers={"mtime": "soon"})], "soon"),
    ("unknown-type", [(_info("vol", b"V", 0o644), None)], "'vol'"),
]


@pytest.mark.parametrize(
    ("members", "named"), [e[1:] for e in ESCAPES], ids=[e[0] for e in ESCAPES]
)
def test_refused_members_name_themselves(members: list[Member], named: str) -> None:
    with pytest.raises(BuildError, match=re.escape(named)):
        layers(tar_bytes(*members))


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"", "not a readable tar"),
        (b"hello, not a tar" * 100, "not a readable tar"),
        (gzip.compress(b"x" * 5000)[:-30], "does not decompress"),
        (b"\xfd7zXZ\x00" + b"\x00" * 100, "xz"),
        (b"BZh9" + b"\x00" * 100, "bzip2"),
    ],
    ids=["empty", "garbage", "truncated-gzip", "xz", "bzip2"],
)
def test_broken_layer_files(tmp_path: Path, data: bytes, why: str) -> None:
    (tmp_path / "layer").write_bytes(data)
    with pytest.raises(BuildError, match=why):
        import_tar(tmp_path / "layer", MemorySink())


def test_truncated_tar_is_refused() -> None:
    data = tar_bytes(reg("big", os.urandom(20000)))
    with pytest.raises(BuildError, match="not a readable tar"):
        layers(data[:8000])


def test_missing_layer_file(tmp_path: Path) -> None:
    with pytest.raises(BuildError, match="nope"):
        open_layer(tmp_path / "nope")


# ---------------------------------------------------------------- layer rules


def test_whiteouts_hide_lower_entries() -> None:
    lower = tar_bytes(reg("a", b"A"), reg("d/x", b"X"), reg("d/y", b"Y"), reg("d/z/deep"))
    upper = tar_bytes(reg(".wh.a"), reg("d/.wh.x"), reg("d/.wh.z"), reg(".wh.never-there"))
    root, sink = layers(lower, upper)
    assert paths(root) == {b"/", b"/d", b"/d/y"}
    assert sink.content(entry(root, b"/d/y")) == b"Y"


def test_whiteout_spares_its_own_layer() -> None:
    root, _ = layers(tar_bytes(reg("f", b"old")), tar_bytes(reg("f", b"new"), reg(".wh.f")))
    assert b"/f" in paths(root)


def test_whiteout_of_merged_dir_drops_only_lower_children() -> None:
    lower = tar_bytes(reg("d/old"))
    upper = tar_bytes(dir_("d"), reg("d/new"), reg(".wh.d"))
    root, _ = layers(lower, upper)
    assert paths(root) == {b"/", b"/d", b"/d/new"}


@pytest.mark.parametrize("marker_first", [True, False])
def test_opaque_directory(marker_first: bool) -> None:
    lower = tar_bytes(reg("o/old"), reg("o/sub/deep"), reg("o/keep/x"), reg("other"))
    marker = [reg("o/.wh..wh..opq")]
    news = [reg("o/new", b"N"), reg("o/keep/y")]
    upper = tar_bytes(dir_("o", mode=0o700), *(marker + news if marker_first else news + marker))
    root, _ = layers(lower, upper)
    assert paths(root) == {b"/", b"/o", b"/o/new", b"/o/keep", b"/o/keep/y", b"/other"}
    assert entry(root, b"/o").mode == stat.S_IFDIR | 0o700


def test_file_replaces_directory_and_directory_replaces_file() -> None:
    root, _ = layers(
        tar_bytes(reg("d/x"), reg("f")),
        tar_bytes(reg("d", b"now a file"), dir_("f")),
        tar_bytes(dir_("d")),
    )
    assert paths(root) == {b"/", b"/d", b"/f"}
    assert entry(root, b"/d").is_dir and entry(root, b"/f").is_dir


def test_directory_over_directory_keeps_children_and_takes_metadata() -> None:
    lower = tar_bytes(dir_("d", mode=0o755, uid=1), reg("d/x"))
    upper = tar_bytes(dir_("d", mode=0o700, uid=2, pax_headers={"SCHILY.xattr.user.k": "v"}))
    root, _ = layers(lower, upper)
    d = entry(root, b"/d")
    assert (d.mode, d.uid, d.xattrs) == (stat.S_IFDIR | 0o700, 2, {b"user.k": b"v"})
    assert paths(root) == {b"/", b"/d", b"/d/x"}


def test_later_member_of_same_name_wins() -> None:
    root, sink = layers(tar_bytes(reg("f", b"first"), reg("f", b"second")))
    assert sink.content(entry(root, b"/f")) == b"second"


# ---------------------------------------------------------------- compression


def _zstd(data: bytes, tmp_path: Path) -> bytes:
    src, out = tmp_path / "in", tmp_path / "in.zst"
    src.write_bytes(data)
    subprocess.run(["zstd", "-q", "-f", str(src), "-o", str(out)], check=True)
    return out.read_bytes()


@pytest.mark.parametrize("codec", ["gzip", "gzip-two-members", "zstd", "zstd-two-frames"])
def test_compressed_layers(tmp_path: Path, codec: str) -> None:
    data = tar_bytes(reg("a", os.urandom(100_000)), dir_("d"), sym("d/s", "../a"))
    half = len(data) // 2
    encoded = {
        "gzip": lambda: gzip.compress(data),
        "gzip-two-members": lambda: gzip.compress(data[:half]) + gzip.compress(data[half:]),
        "zstd": lambda: _zstd(data, tmp_path),
        "zstd-two-frames": lambda: _zstd(data[:half], tmp_path) + _zstd(data[half:], tmp_path),
    }[codec]()
    (tmp_path / "layer").write_bytes(encoded)
    plain_sink, sink = MemorySink(), MemorySink()
    expected = summary(layers(data, sink=plain_sink)[0], plain_sink)
    assert summary(import_tar(tmp_path / "layer", sink), sink) == expected


def test_open_layer_streams_without_holding_the_layer(tmp_path: Path) -> None:
    size = 48 << 20
    data = tar_bytes(reg("zeros", b"\0" * size))
    (tmp_path / "layer").write_bytes(gzip.compress(data, compresslevel=1))
    del data
    sink = HashingSink()
    tracemalloc.start()
    try:
        import_tar(tmp_path / "layer", sink)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert sink.total == size
    assert peak < 8 << 20


# ---------------------------------------------------------------- OCI layouts


def _umoci(*args: str) -> None:
    subprocess.run(["umoci", *args], check=True, capture_output=True)


def test_umoci_image_imports_like_umoci_unpacks_it(tmp_path: Path) -> None:
    image, bundle = f"{tmp_path}/img:t", str(tmp_path / "bundle")
    _umoci("init", "--layout", str(tmp_path / "img"))
    _umoci("new", "--image", image)
    _umoci("unpack", "--image", image, bundle)
    rootfs = tmp_path / "bundle" / "rootfs"
    _write_first_rootfs(rootfs)
    _umoci("repack", "--refresh-bundle", "--image", image, bundle)
    _change_rootfs(rootfs)
    _umoci("repack", "--refresh-bundle", "--image", image, bundle)
    (tmp_path / "l3.tar").write_bytes(
        tar_bytes(dir_("opq"), reg("opq/.wh..wh..opq"), reg("opq/new", b"NEW"))
    )
    _umoci("raw", "add-layer", "--image", image, str(tmp_path / "l3.tar"))
    _umoci("unpack", "--image", image, str(tmp_path / "check"))

    assert is_oci_layout(tmp_path / "img")
    sink = MemorySink()
    root = import_oci_layout(tmp_path / "img", sink, ref="t")
    oracle = tmp_path / "check" / "rootfs"
    assert summary(root, sink) == disk_summary(oracle)
    assert link_groups(root) == disk_link_groups(oracle) != set()
    for gone in [b"GONE-ONLY-IN-LAYER-1", b"REPLACED-OLD", b"OPAQUE-HIDDEN", b"LIB-DELETED"]:
        assert not sink.stored(gone), gone


def _write_first_rootfs(rootfs: Path) -> None:
    for d in ["etc", "usr/lib", "dev", "run", "opq/sub"]:
        (rootfs / d).mkdir(parents=True)
    (rootfs / "etc/conf").write_bytes(b"conf")
    os.link(rootfs / "etc/conf", rootfs / "hard")
    (rootfs / "usr/lib/lib.so").write_bytes(b"LIB-DELETED")
    (rootfs / "big").write_bytes(random.Random(7).randbytes(300_000))
    (rootfs / "tool").write_bytes(b"#!/bin/sh\n")
    (rootfs / "tool").chmod(0o4755)
    os.symlink("usr/lib/lib.so", rootfs / "link")
    os.mknod(rootfs / "dev/null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    os.mknod(rootfs / "dev/sda", stat.S_IFBLK | 0o660, os.makedev(8, 0))
    os.mkfifo(rootfs / "run/fifo")
    os.chown(rootfs / "etc/conf", 1000, 1001)
    (rootfs / "gone").write_bytes(b"GONE-ONLY-IN-LAYER-1")
    (rootfs / "replaced").write_bytes(b"REPLACED-OLD")
    (rootfs / "opq/old").write_bytes(b"OPAQUE-HIDDEN")
    (rootfs / "opq/sub/deep").write_bytes(b"OPAQUE-HIDDEN too")


def _change_rootfs(rootfs: Path) -> None:
    (rootfs / "gone").unlink()
    (rootfs / "usr/lib/lib.so").unlink()
    (rootfs / "usr/lib").rmdir()
    (rootfs / "replaced").unlink()
    (rootfs / "replaced").write_bytes(b"REPLACED-NEW")
    (rootfs / "etc/new").write_bytes(b"added")


class Layout:
    """A hand-made OCI image layout, for what umoci will not make."""

    def __init__(self, top: Path) -> None:
        self.top = top
        (top / "blobs" / "sha256").mkdir(parents=True)
        (top / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')

    def blob(self, data: bytes, media_type: str, **extra: object) -> dict[str, object]:
        digest = hashlib.sha256(data).hexdigest()
        (self.top / "blobs" / "sha256" / digest).write_bytes(data)
        return {"mediaType": media_type, "digest": f"sha256:{digest}", "size": len(data), **extra}

    def layer(self, tar: bytes, codec: str = "gzip") -> dict[str, object]:
        if codec == "gzip":
            return self.blob(gzip.compress(tar), "application/vnd.oci.image.layer.v1.tar+gzip")
        return self.blob(tar, "application/vnd.oci.image.layer.v1.tar")

    def manifest(self, *layer_descs: dict[str, object], **extra: object) -> dict[str, object]:
        config = self.blob(b"{}", "application/vnd.oci.image.config.v1+json")
        doc = {"schemaVersion": 2, "config": config, "layers": list(layer_descs)}
        media_type = "application/vnd.oci.image.manifest.v1+json"
        return self.blob(json.dumps(doc).encode(), media_type, **extra)

    def index(self, *manifests: dict[str, object], **extra: object) -> dict[str, object]:
        doc = {"schemaVersion": 2, "manifests": list(manifests)}
        media_type = "application/vnd.oci.image.index.v1+json"
        return self.blob(json.dumps(doc).encode(), media_type, **extra)

    def top_index(self, *manifests: dict[str, object]) -> Path:
        doc = {"schemaVersion": 2, "manifests": list(manifests)}
        (self.top / "index.json").write_text(json.dumps(doc))
        return self.top

    def blob_path(self, desc: dict[str, object]) -> Path:
        return self.top / "blobs" / "sha256" / str(desc["digest"]).removeprefix("sha256:")


def _platform(os_: str, arch: str, variant: str | None = None) -> dict[str, object]:
    p = {"os": os_, "architecture": arch}
    return {"platform": {**p, "variant": variant} if variant else p}


def _ref(name: str) -> dict[str, object]:
    return {"annotations": {"org.opencontainers.image.ref.name": name}}


def _multiarch(layout: Layout) -> Path:
    amd = layout.manifest(layout.layer(tar_bytes(reg("amd64"))), **_platform("linux", "amd64"))
    arm = layout.layer(tar_bytes(reg("arm64")), codec="none")
    arm_m = layout.manifest(arm, **_platform("linux", "arm64", "v8"))
    return layout.top_index(layout.index(amd, arm_m, **_ref("multi")))


@pytest.mark.parametrize(
    ("platform", "found"),
    [("linux/amd64", b"/amd64"), ("linux/arm64", b"/arm64"), ("linux/arm64/v8", b"/arm64")],
)
def test_oci_index_picks_by_platform(tmp_path: Path, platform: str, found: bytes) -> None:
    top = _multiarch(Layout(tmp_path))
    assert paths(import_oci_layout(top, MemorySink(), platform=platform)) == {b"/", found}


@pytest.mark.parametrize("platform", ["linux/s390x", "linux/arm64/v7", "linux"])
def test_oci_index_without_the_platform(tmp_path: Path, platform: str) -> None:
    top = _multiarch(Layout(tmp_path))
    with pytest.raises(BuildError, match=re.escape(platform)):
        import_oci_layout(top, MemorySink(), platform=platform)


def test_oci_ref_selects_among_images(tmp_path: Path) -> None:
    layout = Layout(tmp_path)
    a = layout.manifest(layout.layer(tar_bytes(reg("a"))), **_ref("a"))
    b = layout.manifest(layout.layer(tar_bytes(reg("b")), codec="none"), **_ref("b"))
    top = layout.top_index(a, b)
    assert paths(import_oci_layout(top, MemorySink(), ref="b")) == {b"/", b"/b"}
    with pytest.raises(BuildError, match=r"several images \['a', 'b'\]"):
        import_oci_layout(top, MemorySink())
    with pytest.raises(BuildError, match="'zz'"):
        import_oci_layout(top, MemorySink(), ref="zz")


def test_oci_zstd_layer(tmp_path: Path) -> None:
    layout = Layout(tmp_path)
    zst = _zstd(tar_bytes(reg("z", b"zstd content")), tmp_path)
    desc = layout.blob(zst, "application/vnd.oci.image.layer.v1.tar+zstd")
    sink = MemorySink()
    root = import_oci_layout(layout.top_index(layout.manifest(desc)), sink)
    assert sink.content(entry(root, b"/z")) == b"zstd content"


def test_oci_stores_only_surviving_content(tmp_path: Path) -> None:
    layout = Layout(tmp_path)
    l1 = layout.layer(tar_bytes(reg("f", b"RESCUED"), reg("h", b"REPLACED"), reg("d/x", b"OPQ")))
    l2 = layout.layer(tar_bytes(hlink("g", "f"), reg("h", b"NEW-H"), reg("tmp", b"TMP")))
    l3 = layout.layer(tar_bytes(reg(".wh.f"), reg(".wh.tmp"), dir_("d"), reg("d/.wh..wh..opq")))
    sink = MemorySink()
    root = import_oci_layout(layout.top_index(layout.manifest(l1, l2, l3)), sink)
    assert paths(root) == {b"/", b"/g", b"/h", b"/d"}
    assert sink.content(entry(root, b"/g")) == b"RESCUED"
    assert sorted(sink.files) == [b"NEW-H", b"RESCUED"]


def test_oci_layer_digest_mismatch_stores_nothing(tmp_path: Path) -> None:
    layout = Layout(tmp_path)
    good = layout.layer(tar_bytes(reg("ok", b"fine")), codec="none")
    bad = layout.layer(tar_bytes(reg("x", b"original")), codec="none")
    top = layout.top_index(layout.manifest(good, bad))
    blob = layout.blob_path(bad)
    blob.write_bytes(blob.read_bytes().replace(b"original", b"tampered"))
    sink = MemorySink()
    with pytest.raises(BuildError, match=f"{bad['digest']} has digest sha256:"):
        import_oci_layout(top, sink)
    assert sink.files == []


def test_oci_corrupt_gzip_layer_reports_digest(tmp_path: Path) -> None:
    layout = Layout(tmp_path)
    desc = layout.layer(tar_bytes(reg("x", os.urandom(5000))))
    top = layout.top_index(layout.manifest(desc))
    blob = layout.blob_path(desc)
    raw = bytearray(blob.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    blob.write_bytes(raw)
    with pytest.raises(BuildError, match="has digest"):
        import_oci_layout(top, MemorySink())


@pytest.mark.parametrize(
    ("change", "why"),
    [
        (lambda d: {**d, "size": int(d["size"]) + 1}, "descriptor says"),
        (lambda d: {**d, "digest": "sha256:../../../../etc/passwd"}, "bad digest"),
        (lambda d: {**d, "digest": "sha256:" + "0" * 64}, "unreadable"),
        (
            lambda d: {**d, "mediaType": "application/vnd.oci.image.layer.nydus.blob.v1"},
            "not a tar",
        ),
        (lambda d: {**d, "size": True}, "bad size"),
    ],
    ids=["size", "traversal", "missing", "media-type", "bool-size"],
)
def test_oci_bad_layer_descriptor(tmp_path: Path, change: object, why: str) -> None:
    layout = Layout(tmp_path)
    desc = layout.layer(tar_bytes(reg("x")))
    assert callable(change)
    top = layout.top_index(layout.manifest(change(desc)))
    with pytest.raises(BuildError, match=why):
        import_oci_layout(top, MemorySink())


def test_not_a_layout(tmp_path: Path) -> None:
    assert not is_oci_layout(tmp_path)
    with pytest.raises(BuildError, match="not an OCI image layout"):
        import_oci_layout(tmp_path, MemorySink())


def test_oci_tampered_manifest(tmp_path: Path) -> None:
    layout = Layout(tmp_path)
    man = layout.manifest(layout.layer(tar_bytes(reg("x"))))
    top = layout.top_index(man)
    path = layout.blob_path(man)
    path.write_bytes(path.read_bytes().replace(b'"layers"', b'"LAYERS"'))
    with pytest.raises(BuildError, match="has digest"):
        import_oci_layout(top, MemorySink())


# ---------------------------------------------------------------- round trip property

_names = st.binary(min_size=1, max_size=10).filter(
    lambda n: b"/" not in n and b"\0" not in n and n not in (b".", b"..") and b".wh." not in n
)


@dataclass(frozen=True)
class Meta:
    perm: int
    uid: int
    gid: int
    mtime: int
    nsec: int
    xattrs: dict[bytes, bytes]


@dataclass(frozen=True)
class Node:
    """One generated entry: `payload` is content, symlink target, (major, minor) or children."""

    kind: str
    meta: Meta
    payload: Any


_KINDS = {  # kind: (tar type, st_mode type bits)
    "reg": (tarfile.REGTYPE, stat.S_IFREG),
    "dir": (tarfile.DIRTYPE, stat.S_IFDIR),
    "sym": (tarfile.SYMTYPE, stat.S_IFLNK),
    "fifo": (tarfile.FIFOTYPE, stat.S_IFIFO),
    "chr": (tarfile.CHRTYPE, stat.S_IFCHR),
    "blk": (tarfile.BLKTYPE, stat.S_IFBLK),
}
_xattr_names = st.sampled_from([b"user.a", b"user.\xc3\xa9", b"security.capability"])
_meta = st.builds(
    Meta,
    perm=st.integers(0, 0o7777),
    uid=st.integers(0, 2**32 - 1),
    gid=st.integers(0, 70000),
    mtime=st.integers(0, 2**34),
    nsec=st.integers(0, 999_999_999),
    xattrs=st.dictionaries(_xattr_names, st.binary(max_size=20), max_size=2),
)
_targets = st.binary(min_size=1, max_size=30).filter(lambda t: b"\0" not in t)
_devices = st.tuples(st.integers(0, 4095), st.integers(0, 65535))
_leaf = st.one_of(
    st.builds(Node, st.just("reg"), _meta, st.binary(max_size=3 * CHUNK // 2)),
    st.builds(Node, st.just("sym"), _meta, _targets),
    st.builds(Node, st.just("fifo"), _meta, st.none()),
    st.builds(Node, st.sampled_from(["chr", "blk"]), _meta, _devices),
)
_tree = st.recursive(
    _leaf,
    lambda kids: st.builds(Node, st.just("dir"), _meta, st.dictionaries(_names, kids, max_size=4)),
    max_leaves=12,
)


def _flatten(children: dict[bytes, Node], prefix: bytes = b"") -> Iterator[tuple[bytes, Node]]:
    """Parents before children, as a tar writer lays them out."""
    for name, node in children.items():
        yield prefix + name, node
        if node.kind == "dir":
            yield from _flatten(node.payload, prefix + name + b"/")


def _spell(path: bytes, style: int) -> str:
    spelled = [path, b"./" + path, b"/" + path, path.replace(b"/", b"//")][style]
    return spelled.decode("utf-8", "surrogateescape")


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


def _as_member(path: bytes, node: Node, style: int) -> Member:
    m = node.meta
    pax = {"mtime": f"{m.mtime}.{m.nsec:09d}"}
    pax.update({"SCHILY.xattr." + _text(k): _text(v) for k, v in m.xattrs.items()})
    info = _info(_spell(path, style), _KINDS[node.kind][0], m.perm, uid=m.uid, gid=m.gid)
    info.mtime, info.pax_headers = m.mtime, pax
    if node.kind == "sym":
        info.linkname = _text(node.payload)
    elif node.kind in ("chr", "blk"):
        info.devmajor, info.devminor = node.payload
    elif node.kind == "reg":
        info.size = len(node.payload)
        return info, node.payload
    return info, None


def _expected(node: Node) -> tuple[object, ...]:
    m = node.meta
    perm = 0o777 if node.kind == "sym" else m.perm
    payload = {"dir": None, "fifo": None}.get(node.kind, node.payload)
    if node.kind in ("chr", "blk"):
        payload = os.makedev(*node.payload)
    return (_KINDS[node.kind][1], perm, m.uid, m.gid, payload, m.mtime, m.nsec, m.xattrs)


def _imported(root: SourceEntry, sink: MemorySink) -> dict[bytes, tuple[object, ...]]:
    brief = summary(root, sink)
    return {p: (*brief[p], e.mtime, e.mtime_nsec, e.xattrs) for p, e in root.walk() if p != b"/"}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tree=st.dictionaries(_names, _tree, max_size=5), style=st.integers(0, 3))
def test_written_tree_imports_as_itself(tree: dict[bytes, Node], style: int) -> None:
    flat = list(_flatten(tree))
    root, sink = layers(tar_bytes(*(_as_member(p, n, style) for p, n in flat)))
    assert _imported(root, sink) == {b"/" + p: _expected(n) for p, n in flat}
