"""A tar layer's content handed to the blob writer as the tar is read (`add_streams`), the
chunks coming back while later members are read, gives the tree and the blob that storing
one file at a time (`add_file`) gives: hardlinks made to a file whose chunks are still
being made included."""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import BinaryIO

import pytest

from rafs import ChunkInfo, SourceEntry
from rafs._blobwriter import BlobWriter
from rafs._digest import Compressor, Digester
from rafs._source import new_root
from rafs._tarimport import apply_layer

from .test_tarimport import Member, dir_, hlink, reg, sym, tar_bytes


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
