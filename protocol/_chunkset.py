"""`ChunkSet`: which chunks of one blob, as a bitmap in a Python int.

Rule: a set is immutable and bounded by its blob's `chunk_count`; bit `i` stands for chunk
`i`. Set algebra is a handful of big-int operations, so announce handling and scheduling
never loop over single chunks unless they must. Ranges are half-open `[start, end)`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

__all__ = ["ChunkSet", "bits_from_ranges", "iter_runs"]


def bits_from_ranges(ranges: Iterable[tuple[int, int]]) -> int:
    """The bitmap with every chunk of `ranges` set (ranges are trusted here)."""
    bits = 0
    for start, end in ranges:
        bits |= ((1 << (end - start)) - 1) << start
    return bits


def iter_runs(bits: int) -> Iterator[tuple[int, int]]:
    """Yield the maximal runs of set bits as `(start, end)`, lowest first."""
    while bits:
        low = bits & -bits
        start = low.bit_length() - 1
        carried = bits + low  # clears the lowest run, sets the bit just past it
        end = (carried & -carried).bit_length() - 1
        bits &= carried
        yield start, end


class ChunkSet:
    """An immutable set of chunk indices in `range(chunk_count)`."""

    __slots__ = ("_bits", "_count")

    def __init__(self, chunk_count: int, bits: int = 0) -> None:
        if chunk_count < 0:
            raise ValueError(f"chunk_count {chunk_count} is negative")
        if bits < 0 or bits >> chunk_count:
            raise ValueError(f"bitmap has chunks past chunk_count {chunk_count}")
        self._count = chunk_count
        self._bits = bits

    # --- construction -------------------------------------------------------------------

    @classmethod
    def full(cls, chunk_count: int) -> ChunkSet:
        """Every chunk of the blob."""
        return cls(chunk_count, (1 << chunk_count) - 1)

    @classmethod
    def from_ranges(cls, chunk_count: int, ranges: Iterable[tuple[int, int]]) -> ChunkSet:
        """The chunks covered by `ranges`; a range past `chunk_count` is a ValueError."""
        for start, end in ranges:
            if not 0 <= start < end <= chunk_count:
                raise ValueError(f"range [{start}, {end}) is outside [0, {chunk_count})")
        return cls(chunk_count, bits_from_ranges(ranges))

    @classmethod
    def from_indices(cls, chunk_count: int, indices: Iterable[int]) -> ChunkSet:
        """The chunks listed in `indices`."""
        bits = 0
        for index in indices:
            if not 0 <= index < chunk_count:
                raise ValueError(f"chunk {index} is outside [0, {chunk_count})")
            bits |= 1 << index
        return cls(chunk_count, bits)

    # --- views --------------------------------------------------------------------------

    @property
    def chunk_count(self) -> int:
        """Number of chunks in the blob (the bound, not the size of the set)."""
        return self._count

    @property
    def bits(self) -> int:
        """The bitmap: bit `i` set when chunk `i` is in the set."""
        return self._bits

    def ranges(self) -> list[tuple[int, int]]:
        """The set as sorted, disjoint, non-adjacent `[start, end)` ranges."""
        return list(iter_runs(self._bits))

    def is_full(self) -> bool:
        """True when every chunk of the blob is in the set."""
        return self._bits == (1 << self._count) - 1

    # --- algebra ------------------------------------------------------------------------

    def _same_blob(self, other: ChunkSet) -> None:
        if other._count != self._count:
            raise ValueError(f"chunk counts differ: {self._count} and {other._count}")

    def __or__(self, other: ChunkSet) -> ChunkSet:
        self._same_blob(other)
        return ChunkSet(self._count, self._bits | other._bits)

    def __and__(self, other: ChunkSet) -> ChunkSet:
        self._same_blob(other)
        return ChunkSet(self._count, self._bits & other._bits)

    def __sub__(self, other: ChunkSet) -> ChunkSet:
        self._same_blob(other)
        return ChunkSet(self._count, self._bits & ~other._bits)

    union = __or__
    intersection = __and__
    difference = __sub__

    def issubset(self, other: ChunkSet) -> bool:
        """True when every chunk here is also in `other`."""
        self._same_blob(other)
        return self._bits & ~other._bits == 0

    # --- container protocol -------------------------------------------------------------

    def __contains__(self, index: object) -> bool:
        return isinstance(index, int) and 0 <= index < self._count and bool(self._bits >> index & 1)

    def __len__(self) -> int:
        return self._bits.bit_count()

    def __bool__(self) -> bool:
        return self._bits != 0

    def __iter__(self) -> Iterator[int]:
        for start, end in iter_runs(self._bits):
            yield from range(start, end)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ChunkSet):
            return NotImplemented
        return self._count == other._count and self._bits == other._bits

    def __hash__(self) -> int:
        return hash((self._count, self._bits))

    def __repr__(self) -> str:
        return f"ChunkSet({self._count}, ranges={self.ranges()!r})"
