"""ChunkSet: ranges, algebra and bounds, against a plain Python set as the model."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol import ChunkSet

CASES: list[tuple[int, list[tuple[int, int]], list[tuple[int, int]], int]] = [
    # chunk_count, ranges in, ranges out (normalised), len
    (10, [], [], 0),
    (10, [(0, 10)], [(0, 10)], 10),
    (10, [(0, 3), (3, 5)], [(0, 5)], 5),
    (10, [(7, 9), (0, 2), (1, 3)], [(0, 3), (7, 9)], 5),
    (70, [(0, 1), (63, 66), (69, 70)], [(0, 1), (63, 66), (69, 70)], 5),
]


@pytest.mark.parametrize(("count", "given_ranges", "ranges", "size"), CASES)
def test_ranges_are_normalised(
    count: int, given_ranges: list[tuple[int, int]], ranges: list[tuple[int, int]], size: int
) -> None:
    chunks = ChunkSet.from_ranges(count, given_ranges)
    assert chunks.ranges() == ranges
    assert len(chunks) == size
    assert list(chunks) == [i for start, end in ranges for i in range(start, end)]


@pytest.mark.parametrize("bad", [(0, 11), (-1, 2), (3, 3), (5, 4)])
def test_ranges_outside_the_blob_are_refused(bad: tuple[int, int]) -> None:
    with pytest.raises(ValueError, match="outside"):
        ChunkSet.from_ranges(10, [bad])


def test_bitmap_past_the_count_is_refused() -> None:
    with pytest.raises(ValueError, match="past chunk_count"):
        ChunkSet(4, 1 << 4)
    with pytest.raises(ValueError, match="outside"):
        ChunkSet.from_indices(4, [4])


def test_sets_of_different_blobs_do_not_mix() -> None:
    with pytest.raises(ValueError, match="chunk counts differ"):
        _ = ChunkSet.full(4) | ChunkSet.full(5)


def test_contains_full_and_subset() -> None:
    chunks = ChunkSet.from_indices(8, [1, 5])
    assert 1 in chunks and 5 in chunks
    assert 0 not in chunks and 8 not in chunks and -1 not in chunks and "1" not in chunks
    assert ChunkSet.full(8).is_full() and not chunks.is_full()
    assert chunks.issubset(ChunkSet.full(8)) and not ChunkSet.full(8).issubset(chunks)
    assert not ChunkSet(8) and chunks


index_sets = st.sets(st.integers(0, 199), max_size=80)


@settings(max_examples=150, deadline=None)
@given(a=index_sets, b=index_sets)
def test_algebra_matches_python_sets(a: set[int], b: set[int]) -> None:
    left, right = ChunkSet.from_indices(200, a), ChunkSet.from_indices(200, b)
    assert set(left | right) == a | b
    assert set(left & right) == a & b
    assert set(left - right) == a - b
    assert set(left.union(right)) == a | b
    assert len(left - right) == len(a - b)
    assert left.issubset(right) == a.issubset(b)
    assert (left == right) == (a == b)
    assert ChunkSet.from_ranges(200, left.ranges()) == left
    assert hash(left) == hash(ChunkSet.from_indices(200, a))


@settings(max_examples=100, deadline=None)
@given(a=index_sets)
def test_ranges_are_sorted_disjoint_and_not_adjacent(a: set[int]) -> None:
    ranges = ChunkSet.from_indices(200, a).ranges()
    for (_, end), (start, _) in itertools.pairwise(ranges):
        assert end < start
    assert {i for start, end in ranges for i in range(start, end)} == a
