"""The chunk map file: header bytes, bit order, validation, growth, and its locks."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rafs._chunkmap import (
    BITMAP_OFFSET,
    HEADER,
    ChunkMap,
    CorruptChunkMap,
    MapHeader,
    clear_bit,
    create_map,
    decode_header,
    decode_indices,
    encode_indices,
    has_bit,
    lock_range,
    set_bit,
    unlock_range,
)

GOLDEN_HEADER = (
    b"NYCM"  # magic
    + (1).to_bytes(4, "little")  # version
    + (1024).to_bytes(4, "little")  # chunk_count
    + bytes(4)  # reserved
    + (0x0102030405060708).to_bytes(8, "little")  # last_access
    + bytes(8)  # reserved
)


def test_header_golden_bytes() -> None:
    assert MapHeader(1024, 0x0102030405060708).encode() == GOLDEN_HEADER
    assert decode_header(GOLDEN_HEADER, Path("m")) == MapHeader(1024, 0x0102030405060708)


@pytest.mark.parametrize(
    ("raw", "what", "value"),
    [
        (GOLDEN_HEADER[:31], "header length", 31),
        (b"XXXX" + GOLDEN_HEADER[4:], "magic", b"XXXX"),
        (GOLDEN_HEADER[:4] + (2).to_bytes(4, "little") + GOLDEN_HEADER[8:], "version", 2),
    ],
)
def test_forged_header_names_field_and_value(raw: bytes, what: str, value: object) -> None:
    with pytest.raises(CorruptChunkMap) as caught:
        decode_header(raw, Path("blob.chunk_map"))
    assert (caught.value.what, caught.value.value) == (what, value)
    assert "blob.chunk_map" in str(caught.value)


def test_truncated_bitmap_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "b.chunk_map"
    path.write_bytes(MapHeader(1024).encode() + bytes(100))  # 1024 bits need 128 bytes
    with pytest.raises(CorruptChunkMap) as caught:
        ChunkMap.open(path, writable=False)
    assert caught.value.what == "file size"


def test_bit_order_is_little_endian_lsb_first() -> None:
    bitmap = bytearray(2)
    set_bit(bitmap, 0)
    set_bit(bitmap, 9)
    assert bytes(bitmap) == b"\x01\x02"
    assert int.from_bytes(bitmap, "little") == (1 << 0) | (1 << 9)


@given(st.sets(st.integers(0, 2000)))
def test_indices_round_trip(indices: set[int]) -> None:
    bitmap = encode_indices(indices, 2001)
    assert decode_indices(bitmap) == sorted(indices)
    assert int.from_bytes(bitmap, "little") == sum(1 << i for i in indices)


ops = st.lists(st.tuples(st.booleans(), st.integers(0, 300)), max_size=60)


@given(ops)
def test_set_and_clear_follow_a_set_model(steps: list[tuple[bool, int]]) -> None:
    bitmap, model = bytearray(38), set[int]()
    for add, index in steps:
        (set_bit if add else clear_bit)(bitmap, index)
        (model.add if add else model.discard)(index)
    assert decode_indices(bitmap) == sorted(model)
    assert all(has_bit(bitmap, i) == (i in model) for i in range(304))


file_ops = st.lists(
    st.tuples(st.booleans(), st.lists(st.integers(0, 5000), min_size=1, max_size=8)),
    max_size=12,
)


@settings(max_examples=40, deadline=None)
@given(file_ops)
def test_map_file_follows_a_set_model_and_reopens(steps: list[tuple[bool, list[int]]]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "b.chunk_map"
        create_map(path)
        model: set[int] = set()
        with ChunkMap.open(path, writable=True) as chunk_map:  # type: ignore[union-attr]
            for add, indices in steps:
                (chunk_map.set_many if add else chunk_map.clear_many)(indices)
                model = model | set(indices) if add else model - set(indices)
        with ChunkMap.open(path, writable=False) as reopened:  # type: ignore[union-attr]
            assert decode_indices(reopened.bitmap()) == sorted(model)
            assert all(reopened.has(i) == (i in model) for i in range(5001))
            assert reopened.header().chunk_count > max(model, default=-1)


def test_growth_keeps_bits_and_extends_with_zeros(tmp_path: Path) -> None:
    path = tmp_path / "b.chunk_map"
    create_map(path)
    with ChunkMap.open(path, writable=True) as chunk_map:  # type: ignore[union-attr]
        chunk_map.set_many([3, 1023])
        assert chunk_map.header().chunk_count == 1024
        chunk_map.set_many([1024])
        assert chunk_map.header().chunk_count == 2048  # doubles
        assert decode_indices(chunk_map.bitmap()) == [3, 1023, 1024]
    assert path.stat().st_size == BITMAP_OFFSET + 2048 // 8


def test_create_never_replaces_an_existing_map(tmp_path: Path) -> None:
    path = tmp_path / "b.chunk_map"
    create_map(path)
    with ChunkMap.open(path, writable=True) as chunk_map:  # type: ignore[union-attr]
        chunk_map.set_many([7])
    create_map(path)
    with ChunkMap.open(path, writable=False) as chunk_map:  # type: ignore[union-attr]
        assert chunk_map.has(7)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.chunk_map"]  # no temp left


def test_missing_map_opens_as_none(tmp_path: Path) -> None:
    assert ChunkMap.open(tmp_path / "none.chunk_map", writable=False) is None


def test_touch_records_last_access(tmp_path: Path) -> None:
    path = tmp_path / "b.chunk_map"
    create_map(path)
    with ChunkMap.open(path, writable=True) as chunk_map:  # type: ignore[union-attr]
        chunk_map.touch(123456789)
        assert chunk_map.last_access() == 123456789
    assert HEADER.unpack(path.read_bytes()[:32])[4] == 123456789


def test_locks_belong_to_the_open_file_not_the_process(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"x")
    first, second, third = (os.open(path, os.O_RDWR) for _ in range(3))
    try:
        assert lock_range(first, 10, 5, exclusive=True)
        assert not lock_range(second, 12, 1, exclusive=False, wait=False)  # same process
        os.close(third)  # a POSIX lock would be dropped here; an OFD lock is not
        assert not lock_range(second, 12, 1, exclusive=True, wait=False)
        assert lock_range(second, 15, 1, exclusive=True, wait=False)  # outside the range
        unlock_range(first, 10, 5)
        assert lock_range(second, 10, 5, exclusive=True, wait=False)
    finally:
        os.close(first)
        os.close(second)


def test_zero_length_lock_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"")
    fd = os.open(path, os.O_RDWR)
    try:
        with pytest.raises(ValueError, match="length 0"):
            lock_range(fd, 0, 0, exclusive=True)
    finally:
        os.close(fd)


def test_clearing_past_capacity_leaves_the_file_alone(tmp_path: Path) -> None:
    path = tmp_path / "b.chunk_map"
    create_map(path)
    size = path.stat().st_size
    with ChunkMap.open(path, writable=True) as chunk_map:  # type: ignore[union-attr]
        chunk_map.clear_many([5, 10**6])
    assert path.stat().st_size == size
