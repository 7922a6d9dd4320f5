"""The chunk map: a per-blob file with one bit per chunk saying which chunks of the blob's
cache data file hold verified, durable bytes; and the byte-range locks several processes
use to share it.

The rule: a bit is set only by `ChunkMap.set_many`, which its caller invokes after the
chunks' bytes were verified and made durable; every read-modify-write of a bitmap byte
happens under an exclusive lock on that byte and ends with `fdatasync`, so concurrent
writers in any process never lose each other's bits and a cleared bit is durable before the
caller may reuse the chunk's bytes.

Locks are Linux open-file-description locks (`F_OFD_SETLKW`): owned by the open file, not
the process, so two threads that each opened the file exclude each other, and closing one
descriptor never drops a lock held through another (the trap of classic POSIX locks).
"""

from __future__ import annotations

import errno
import fcntl
import os
import struct
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

from ._errors import RafsError

# --- the on-disk record --------------------------------------------------------------------

MAGIC = b"NYCM"
VERSION = 1
# Little-endian, 32 bytes, followed by the bitmap.
HEADER = struct.Struct(
    "<"
    "4s"  # magic: b"NYCM"
    "I"  # version: 1
    "I"  # chunk_count: bits the bitmap holds (grows on demand, never shrinks)
    "I"  # reserved: 0
    "Q"  # last_access: ns since the epoch of the last read or write (advisory, for LRU)
    "Q"  # reserved: 0
)
assert HEADER.size == 32
BITMAP_OFFSET = HEADER.size
_COUNT_FIELD = (8, 4)  # (offset, size) of chunk_count inside HEADER
_ACCESS_FIELD = (16, 8)  # (offset, size) of last_access inside HEADER
_MIN_GROWTH = 1024  # bits a new map holds, and the least a growing map adds

_BitChange = Callable[[bytearray, int], None]


class CacheError(RafsError):
    """A cache file is not what the cache wrote, or the cache was handed bad input."""


class CorruptChunkMap(CacheError):
    """A chunk map file failed a structural check; names the file, the field and its value."""

    def __init__(self, path: Path, what: str, value: object) -> None:
        super().__init__(f"corrupt chunk map {path}: {what} = {value!r}")
        self.path = path
        self.what = what
        self.value = value


@dataclass(frozen=True, slots=True)
class MapHeader:
    chunk_count: int
    last_access: int = 0

    def encode(self) -> bytes:
        return HEADER.pack(MAGIC, VERSION, self.chunk_count, 0, self.last_access, 0)


def decode_header(raw: bytes, path: Path) -> MapHeader:
    """Parse and validate the 32-byte header; each failed check names the value found."""
    if len(raw) < HEADER.size:
        raise CorruptChunkMap(path, "header length", len(raw))
    magic, version, count, _, last_access, _ = HEADER.unpack_from(raw)
    if magic != MAGIC:
        raise CorruptChunkMap(path, "magic", magic)
    if version != VERSION:
        raise CorruptChunkMap(path, "version", version)
    return MapHeader(count, last_access)


def bitmap_size(chunk_count: int) -> int:
    return (chunk_count + 7) // 8


# --- bits, in memory -----------------------------------------------------------------------
# Bit i is bit (i % 8) of byte i // 8: the bitmap read as a little-endian integer has bit i
# set when chunk i is present (the order `protocol.ChunkSet.bits` uses).


def has_bit(bitmap: bytes | bytearray, index: int) -> bool:
    byte = index >> 3
    return byte < len(bitmap) and bool(bitmap[byte] >> (index & 7) & 1)


def set_bit(bitmap: bytearray, index: int) -> None:
    bitmap[index >> 3] |= 1 << (index & 7)


def clear_bit(bitmap: bytearray, index: int) -> None:
    bitmap[index >> 3] &= ~(1 << (index & 7)) & 0xFF


def encode_indices(indices: Iterable[int], chunk_count: int) -> bytes:
    bitmap = bytearray(bitmap_size(chunk_count))
    for index in indices:
        set_bit(bitmap, index)
    return bytes(bitmap)


def decode_indices(bitmap: bytes | bytearray) -> list[int]:
    value = int.from_bytes(bitmap, "little")
    return [i for i in range(len(bitmap) * 8) if value >> i & 1]


# --- the chunk index sidecar ---------------------------------------------------------------
# `<blob_id>.chunk_index`: one fixed-size record per chunk index, at index * RECORD.size, so
# a peer can serve a chunk by blob id and index alone. A record is written and synced before
# its chunk's bit is set, and never changes while the bit is set; holes read as zeros and a
# zero `valid` byte means "no record".

RECORD = struct.Struct(
    "<"
    "Q"  # compressed_offset: where the stored bytes lie in the blob (and the data file)
    "I"  # compressed_size: stored bytes
    "I"  # uncompressed_size
    "I"  # flags: the chunk's CHUNK_* bits
    "B"  # compressor: 0 none, 1 zstd, 2 lz4_block, 3 gzip
    "B"  # valid: 1 once written
    "2x"  # reserved: 0
    "32s"  # digest of the uncompressed bytes
)
assert RECORD.size == 56


@dataclass(frozen=True, slots=True)
class ChunkRecord:
    """Where chunk `index` of a blob lies and what it hashes to, as the cache recorded it."""

    index: int
    compressed_offset: int
    compressed_size: int
    uncompressed_size: int
    flags: int
    compressor: int
    digest: bytes

    def encode(self) -> bytes:
        return RECORD.pack(
            self.compressed_offset,
            self.compressed_size,
            self.uncompressed_size,
            self.flags,
            self.compressor,
            1,
            self.digest,
        )


def decode_records(raw: bytes, first_index: int) -> list[ChunkRecord]:
    """The valid records in `raw` (whole records read from index `first_index` on)."""
    found = []
    for n, fields in enumerate(RECORD.iter_unpack(raw[: len(raw) - len(raw) % RECORD.size])):
        offset, size, usize, flags, compressor, valid, digest = fields
        if valid:
            found.append(
                ChunkRecord(first_index + n, offset, size, usize, flags, compressor, digest)
            )
    return found


# --- byte-range locks ----------------------------------------------------------------------

_FLOCK = struct.Struct("hhqqi4x")  # struct flock, 64-bit Linux: type, whence, start, len, pid
assert _FLOCK.size == 32


def lock_range(fd: int, start: int, length: int, *, exclusive: bool, wait: bool = True) -> bool:
    """Lock `length` bytes from `start`; without `wait`, False when another holder conflicts."""
    kind = fcntl.F_WRLCK if exclusive else fcntl.F_RDLCK
    command = fcntl.F_OFD_SETLKW if wait else fcntl.F_OFD_SETLK
    try:
        fcntl.fcntl(fd, command, _flock(kind, start, length))
    except OSError as exc:
        if not wait and exc.errno in (errno.EAGAIN, errno.EACCES):
            return False
        raise
    return True


def unlock_range(fd: int, start: int, length: int) -> None:
    fcntl.fcntl(fd, fcntl.F_OFD_SETLK, _flock(fcntl.F_UNLCK, start, length))


@contextmanager
def locked(fd: int, start: int, length: int, *, exclusive: bool) -> Iterator[None]:
    lock_range(fd, start, length, exclusive=exclusive)
    try:
        yield
    finally:
        unlock_range(fd, start, length)


def _flock(kind: int, start: int, length: int) -> bytes:
    if length <= 0:  # a zero length would mean "to the end of the file, however it grows"
        raise ValueError(f"lock length {length} must be positive")
    return _FLOCK.pack(kind, os.SEEK_SET, start, length, 0)


# --- the file ------------------------------------------------------------------------------


def create_map(path: Path) -> None:
    """Put an empty map at `path` unless one is there: temp file, fsync, link into place.

    `link` (not `rename`) so a map another process created meanwhile is never replaced.
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    try:
        os.write(fd, MapHeader(_MIN_GROWTH).encode() + bytes(bitmap_size(_MIN_GROWTH)))
        os.fsync(fd)
        with suppress(FileExistsError):  # another process linked its map first: keep it
            os.link(tmp, path)
    finally:
        os.close(fd)
        os.unlink(tmp)
    fsync_dir(path.parent)


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class ChunkMap:
    """One open chunk map file. Open one per operation: locks belong to the open file."""

    def __init__(self, fd: int, path: Path) -> None:
        self._fd = fd
        self.path = path

    @classmethod
    def open(cls, path: Path, *, writable: bool) -> ChunkMap | None:
        """The map at `path` after its header checked out, or None when there is none."""
        flags = (os.O_RDWR if writable else os.O_RDONLY) | os.O_CLOEXEC
        try:
            fd = os.open(path, flags)
        except FileNotFoundError:
            return None
        chunk_map = cls(fd, path)
        try:
            chunk_map.header()
        except BaseException:
            chunk_map.close()
            raise
        return chunk_map

    def close(self) -> None:
        os.close(self._fd)

    def __enter__(self) -> ChunkMap:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def header(self) -> MapHeader:
        header = decode_header(os.pread(self._fd, HEADER.size, 0), self.path)
        size = os.fstat(self._fd).st_size
        if size < BITMAP_OFFSET + bitmap_size(header.chunk_count):
            raise CorruptChunkMap(self.path, "file size", size)
        return header

    # reading

    def has(self, index: int) -> bool:
        """Whether chunk `index` is present. Stable while its data range is locked."""
        return has_bit(os.pread(self._fd, 1, BITMAP_OFFSET + (index >> 3)), index & 7)

    def bitmap(self) -> bytes:
        """A snapshot of the whole bitmap, `header().chunk_count` bits."""
        return os.pread(self._fd, bitmap_size(self.header().chunk_count), BITMAP_OFFSET)

    def last_access(self) -> int:
        start, size = _ACCESS_FIELD
        return int.from_bytes(os.pread(self._fd, size, start), "little")

    # writing

    def set_many(self, indices: Iterable[int]) -> None:
        """Set the bits, then fdatasync. Call only once the chunks' bytes are durable."""
        wanted = sorted(set(indices))
        if wanted:
            self._ensure_capacity(wanted[-1] + 1)
            self._update_bits(wanted, set_bit)

    def clear_many(self, indices: Iterable[int]) -> None:
        """Clear the bits, then fdatasync, so the chunks' bytes may be overwritten after."""
        count = self.header().chunk_count  # bits past it are clear already
        self._update_bits(sorted(i for i in set(indices) if i < count), clear_bit)

    def touch(self, now_ns: int) -> None:
        """Record an access for LRU eviction; not synced (a lost update only reorders LRU)."""
        start, size = _ACCESS_FIELD
        with locked(self._fd, start, size, exclusive=True):
            os.pwrite(self._fd, now_ns.to_bytes(size, "little"), start)

    def _update_bits(self, indices: list[int], change: _BitChange) -> None:
        for byte_index, members in _by_byte(indices):
            offset = BITMAP_OFFSET + byte_index
            with locked(self._fd, offset, 1, exclusive=True):
                byte = bytearray(os.pread(self._fd, 1, offset).ljust(1, b"\0"))
                for index in members:
                    change(byte, index & 7)
                os.pwrite(self._fd, bytes(byte), offset)
        if indices:
            os.fdatasync(self._fd)

    def _ensure_capacity(self, needed: int) -> None:
        """Grow the bitmap: extend the file with zeros first, then raise the count."""
        if self.header().chunk_count >= needed:
            return
        start, size = _COUNT_FIELD
        with locked(self._fd, start, size, exclusive=True):
            count = self.header().chunk_count
            if count >= needed:
                return
            new_count = max(needed, count * 2, _MIN_GROWTH)
            os.ftruncate(self._fd, BITMAP_OFFSET + bitmap_size(new_count))
            os.fdatasync(self._fd)
            os.pwrite(self._fd, new_count.to_bytes(size, "little"), start)
            os.fdatasync(self._fd)


def _by_byte(indices: list[int]) -> Iterator[tuple[int, list[int]]]:
    """Sorted indices grouped by the bitmap byte holding them."""
    group: list[int] = []
    for index in indices:
        if group and group[0] >> 3 != index >> 3:
            yield group[0] >> 3, group
            group = []
        group.append(index)
    if group:
        yield group[0] >> 3, group
