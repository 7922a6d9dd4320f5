"""Unit tables for the piece model, dfget's argument and resume rules, and the mirror's
Range parsing (no servers)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from peer._download import _from_this_host, _pieces_of
from peer._mirror import _range
from peer._pieces import (
    PIECE_SIZE,
    BadPieceTable,
    PieceTable,
    file_blob_id,
    parse_digest,
    piece_spans,
    table_blob_id,
)
from peer.dfget import USAGE, DfgetError, PartFile, expected_digest

P = PIECE_SIZE
D = "sha256:" + "ab" * 32


@pytest.mark.parametrize(("size", "spans"), [
    (0, []), (1, [(0, 1)]), (P, [(0, P)]), (P + 1, [(0, P), (P, 1)]),
    (2 * P + 7, [(0, P), (P, P), (2 * P, 7)]),
])  # fmt: skip
def test_piece_spans(size: int, spans: list[tuple[int, int]]) -> None:
    assert piece_spans(size) == spans


@pytest.mark.parametrize(("text", "expected"), [
    (D, D), (D.upper().replace("SHA256", "sha256"), D), (f" {D} ", D),
])  # fmt: skip
def test_digests_parse(text: str, expected: str) -> None:
    assert parse_digest(text) == expected


@pytest.mark.parametrize("text", ["md5:" + "0" * 32, "sha256:" + "0" * 63, "sha256:" + "g" * 64,
                                  "0" * 64, ""])  # fmt: skip
def test_bad_digests_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="digest"):
        parse_digest(text)


def test_blob_ids_are_keyed_by_digest_else_url_and_never_the_digest_itself() -> None:
    url = "http://h/f"
    assert file_blob_id(url, D) == file_blob_id("http://other/f", D)
    assert file_blob_id(url, None) != file_blob_id("http://other/f", None)
    assert file_blob_id(url, D) != D.removeprefix("sha256:")  # never a Nydus blob's id
    assert table_blob_id(file_blob_id(url, D)) != file_blob_id(url, D)


def _table(size: int) -> PieceTable:
    digests = tuple(hashlib.sha256(bytes([n])).digest() for n in range(len(piece_spans(size))))
    return PieceTable(size, P, digests, D)


def test_table_round_trip_and_records() -> None:
    table = _table(2 * P + 3)
    assert PieceTable.decode(table.encode()) == table
    infos = table.infos()
    assert [(i.index, i.compressed_offset, i.compressed_size) for i in infos] == [
        (0, 0, P), (1, P, P), (2, 2 * P, 3)]  # fmt: skip
    assert all(not i.compressed and i.uncompressed_size == i.compressed_size for i in infos)
    chunk = table.table_chunk()
    assert chunk.info.digest == hashlib.sha256(chunk.stored).digest()


@pytest.mark.parametrize("mutate", [
    lambda b: {**b, "version": 2},
    lambda b: {**b, "digests": b["digests"][:-1]},
    lambda b: {**b, "digests": ["00"] * len(b["digests"])},
    lambda b: {**b, "content_digest": "md5:x"},
    lambda b: {k: v for k, v in b.items() if k != "size"},
    lambda b: {**b, "piece_size": 0},
])  # fmt: skip
def test_bad_tables_are_refused(mutate: object) -> None:
    assert callable(mutate)
    body = mutate(json.loads(_table(P + 1).encode()))
    with pytest.raises(BadPieceTable):
        PieceTable.decode(json.dumps(body).encode())
    with pytest.raises(BadPieceTable):
        PieceTable.decode(b"not json")


def test_registry_blob_urls_imply_their_digest() -> None:
    url = f"http://127.0.0.1:5000/v2/library/app/blobs/{D}"
    assert expected_digest(url, None) == D
    assert expected_digest(url, D) == D
    assert expected_digest("http://h/file.iso", D) == D
    assert expected_digest("http://h/file.iso", None) is None
    with pytest.raises(DfgetError) as caught:
        expected_digest(url, "sha256:" + "cd" * 32)
    assert caught.value.exit_code == USAGE


def test_a_part_file_resumes_only_for_the_same_url_and_digest(tmp_path: Path) -> None:
    part = PartFile(tmp_path / "out")
    assert part.resumable("http://h/f", None) == (0, None)
    part.part.write_bytes(b"x" * 10)
    part.state.write_text(json.dumps({"url": "http://h/f", "digest": D, "size": 20}))
    assert part.resumable("http://h/f", None) == (10, D)
    assert part.resumable("http://h/f", D) == (10, D)
    assert part.resumable("http://h/g", None) == (0, None)
    assert part.resumable("http://h/f", "sha256:" + "cd" * 32) == (0, None)
    part.state.write_text(json.dumps({"url": "http://h/f", "digest": D, "size": 5}))
    assert part.resumable("http://h/f", None) == (0, None)  # longer than the file
    part.state.write_text("{")
    assert part.resumable("http://h/f", None) == (0, None)


@pytest.mark.parametrize(("header", "span"), [
    (None, (0, None)), ("bytes=0-", (0, 100)), ("bytes=10-", (10, 100)),
    ("bytes=5-9", (5, 10)), ("bytes=5-500", (5, 100)), ("bytes=99-", (99, 100)),
    ("bytes=100-", None), ("bytes=-5", None), ("items=0-1", None), ("bytes=9-5", None),
])  # fmt: skip
def test_mirror_ranges(header: str | None, span: tuple[int, int | None] | None) -> None:
    assert _range(header, 100) == span


async def test_a_stream_is_recut_into_pieces() -> None:
    async def blocks() -> AsyncIterator[bytes]:
        for size in (P - 1, 2, P + 5, 3):
            yield b"z" * size

    sizes = [len(piece) async for piece in _pieces_of(blocks())]
    assert sizes == [P, P, 9]


@pytest.mark.parametrize(("remote", "allowed"), [
    ("127.0.0.1", True), ("127.8.9.1", True), ("::1", True), ("10.0.0.1", False),
    ("192.168.1.5", False), (None, False), ("not-an-ip", False),
])  # fmt: skip
def test_downloads_are_only_for_local_clients(remote: str | None, allowed: bool) -> None:
    assert _from_this_host(remote) is allowed
