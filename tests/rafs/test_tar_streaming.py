"""A tar layer's content handed to the blob writer as the tar is read (`add_streams`), the
chunks coming back while later members are read, gives the tree and the blob that storing
one file at a time (`add_file`) gives: hardlinks made to a file whose chunks are still
being made included."""

from __future__ import annotations

import io
import os
import subprocess
import tarfile
from pathlib import Path
from typing import BinaryIO

import pytest

from rafs import ChunkInfo, SourceEntry
from rafs._blobwriter import BlobWriter
from rafs._digest import Compressor, Digester
from rafs._source import new_root
from rafs._tarimport import _TarHeader, apply_layer

from .test_tarimport import VECTORS, Member, dir_, hlink, reg, sym, tar_bytes


class OneFileAtATime:
    """The writer behind the plain `ChunkSink` protocol only (no `add_streams`)."""

    def __init__(self, writer: BlobWriter) -> None:
        self.writer = writer

    def add_file(self, stream: BinaryIO, size: int) -> tuple[ChunkInfo, ...]:
        return self.writer.add_file(stream, size)


def _members() -> list[Member]:
    members: list[Member] = [dir_("d")]
    for n in range(300):  # several batches of small files
        members.append(reg(f"d/f{n:03}", os.urandom(n * 13 + 1)))
    members += [
        reg("d/empty"),
        reg("big", os.urandom(5 * 4096 + 17)),  # several chunks
        hlink("h1", "d/f299"),  # its target's chunks are still in flight
        hlink("h2", "h1"),  # a link to that link
        hlink("h3", "d/f000"),
        reg("dup", b"first"),
        hlink("h4", "dup"),  # keeps the first content ...
        reg("dup", b"second, longer"),  # ... when the name is given new content
        reg("copy", os.urandom(1) * 9000),  # chunks known already, within the layer
        reg("copy2", b""),
        sym("s", "d/f001"),
    ]
    members.append(reg("copy3", members[-3][1] or b""))
    return members


def _tree(root: SourceEntry) -> dict[bytes, tuple[object, ...]]:
    out: dict[bytes, tuple[object, ...]] = {}
    for path, e in root.walk():
        out[path] = (e.mode, e.size, e.chunks, e.symlink, e.link_key is not None)
    return out


@pytest.mark.parametrize("chunk_size", [0x1000, 0x100000])
def test_streamed_layer_gives_the_tree_and_blob_of_one_file_at_a_time(
    tmp_path: Path, chunk_size: int
) -> None:
    layer = tar_bytes(*_members())
    results = []
    for name, wrap in [("streamed", False), ("one-by-one", True)]:
        blobs = tmp_path / name
        blobs.mkdir()
        writer = BlobWriter(
            blobs, chunk_size=chunk_size, compressor=Compressor.ZSTD, digester=Digester.BLAKE3
        )
        root = new_root()
        apply_layer(root, io.BytesIO(layer), OneFileAtATime(writer) if wrap else writer)
        info = writer.finish()
        assert info is not None
        results.append((_tree(root), (blobs / info.blob_id).read_bytes()))
    (streamed_tree, streamed_blob), (plain_tree, plain_blob) = results
    assert streamed_tree == plain_tree
    assert streamed_blob == plain_blob
    assert streamed_tree[b"/h2"][2] == streamed_tree[b"/d/f299"][2] is not None
    assert streamed_tree[b"/h4"][2] != streamed_tree[b"/dup"][2]


# --- the quicker tar header parse gives tarfile's TarInfo ---------------------------------

_FIELDS = ("name", "mode", "uid", "gid", "size", "mtime", "chksum", "type", "linkname",
           "uname", "gname", "devmajor", "devminor", "pax_headers", "sparse", "offset",
           "offset_data")  # fmt: skip


def _headers(data: bytes, tarinfo: type[tarfile.TarInfo]) -> list[tuple[object, ...]]:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r|", tarinfo=tarinfo,
                      encoding="utf-8", errors="surrogateescape") as tar:  # fmt: skip
        return [tuple(getattr(info, f) for f in _FIELDS) for info in tar]


def _odd_members() -> list[Member]:
    long = "d/" + "x" * 120 + "/" + "y" * 90  # past 100 bytes: ustar prefix, GNU L, PAX path
    return [
        dir_("d"),
        reg(long, b"long name"),
        hlink("link-" + "z" * 110, long),  # a long link name
        reg("big-ids", b"x", uid=3_000_000, gid=2_500_000),  # past 7 octal digits: binary
        reg("caf\u00e9-\u65e5\u672c", b"unicode name"),
        reg("old-mtime", b"", mtime=0),
        _dev("cdev", tarfile.CHRTYPE, 4, 64),
        _dev("bdev", tarfile.BLKTYPE, 8, 1),
        reg("odd-mode", b"m", mode=0o7777),
        sym("sym", "caf\u00e9-\u65e5\u672c"),
    ]


def _dev(name: str, kind: bytes, major: int, minor: int) -> Member:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.devmajor, info.devminor = kind, 0o600, major, minor
    return info, None


def _v7_directory() -> bytes:
    """A V7-style header: a regular file type with a name ending in '/'."""
    info = tarfile.TarInfo("v7dir/")
    info.type = tarfile.AREGTYPE
    return info.tobuf(tarfile.USTAR_FORMAT) + bytes(1024)


@pytest.mark.parametrize("fmt", [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_quick_headers_are_tarfiles_headers(fmt: int) -> None:
    members = _odd_members()
    if fmt == tarfile.USTAR_FORMAT:  # no binary numbers, no names past the prefix
        members = [m for m in members if m[0].uid < 0o7777777 and len(m[0].linkname) < 100]
    data = tar_bytes(*members, fmt=fmt)
    assert _headers(data, _TarHeader) == _headers(data, tarfile.TarInfo)


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(_v7_directory(), id="v7-directory"),
        *[pytest.param(p.read_bytes(), id=p.name) for p in sorted(VECTORS.glob("*.tar"))],
    ],
)
def test_quick_headers_of_other_tars_are_tarfiles_headers(data: bytes) -> None:
    assert _headers(data, _TarHeader) == _headers(data, tarfile.TarInfo)


def test_quick_headers_of_a_gnu_sparse_file_and_a_bad_checksum(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    with open(tmp_path / "src" / "sparse", "wb") as f:
        f.seek(3 << 20)
        f.write(b"end")
    for fmt in ("gnu", "posix"):
        out = tmp_path / f"{fmt}.tar"
        subprocess.run(["tar", "--sparse", f"--format={fmt}", "-cf", str(out), "-C",
                        str(tmp_path / "src"), "."], check=True)  # fmt: skip
        data = out.read_bytes()
        assert _headers(data, _TarHeader) == _headers(data, tarfile.TarInfo)
    broken = bytearray(tar_bytes(reg("a", b"1"), reg("b", b"2")))
    broken[1024 + 150] ^= 0x01  # the second header's checksum field
    assert _headers(bytes(broken), _TarHeader) == _headers(bytes(broken), tarfile.TarInfo)
