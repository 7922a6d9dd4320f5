"""Chunk frames: how compressed chunk bytes travel from peer to peer (sans-IO).

A response body is a sequence of frames. Each frame is a fixed 48-byte header followed by
`length` bytes of payload, the chunk exactly as stored in its blob (compressed):

    offset size field        meaning
         0    4 magic        b"NYCF"
         4    1 version      PROTOCOL_VERSION (1)
         5    1 flags        bit 0 LAST: final frame of the response; other bits zero
         6    1 codec        0 none, 1 zstd, 2 lz4_block, 3 gzip: how the payload is compressed
         7    1 reserved     zero
         8   32 blob_id      raw 32 bytes of the blob id (64 hex digits on the wire elsewhere)
        40    4 chunk_index  index of the chunk in its blob, big-endian
        44    4 length       payload length in bytes, big-endian, at most MAX_FRAME_PAYLOAD

All integers are big-endian. The receiver verifies each chunk's digest after decompression;
frames carry no digest of their own. Rule: `FrameDecoder` holds no socket; it takes bytes
as they arrive and returns whole frames, and refuses a bad header as soon as it is complete
(before buffering the payload). After an error the decoder stays failed.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

from ._errors import BadFrameMagic, FrameError, FrameTooLarge, TruncatedFrame, UnsupportedVersion
from ._types import PROTOCOL_VERSION

__all__ = [
    "FRAME_HEADER",
    "FRAME_MAGIC",
    "MAX_FRAME_PAYLOAD",
    "Codec",
    "Frame",
    "FrameDecoder",
    "FrameFlags",
    "encode_frame",
]

FRAME_MAGIC = b"NYCF"
FRAME_HEADER = struct.Struct(">4sBBBx32sII")
assert FRAME_HEADER.size == 48
MAX_FRAME_PAYLOAD = 16 * 1024 * 1024 + 4096
"""Largest payload: a 16 MiB chunk (Nydus' largest) plus compression overhead."""


class FrameFlags(enum.IntFlag):
    """Bits of the header's `flags` byte."""

    NONE = 0
    LAST = 0x01


_KNOWN_FLAGS = FrameFlags.LAST


class Codec(enum.IntEnum):
    """How a frame's payload is compressed (as recorded in the blob)."""

    NONE = 0
    ZSTD = 1
    LZ4_BLOCK = 2
    GZIP = 3


@dataclass(frozen=True, slots=True)
class Frame:
    """One chunk in transit."""

    blob_id: str
    chunk_index: int
    payload: bytes
    codec: Codec = Codec.NONE
    flags: FrameFlags = FrameFlags.NONE

    @property
    def last(self) -> bool:
        """True for the final frame of a response."""
        return bool(self.flags & FrameFlags.LAST)


def encode_frame(frame: Frame) -> bytes:
    """Header plus payload, ready to write."""
    if len(frame.payload) > MAX_FRAME_PAYLOAD:
        raise FrameTooLarge(len(frame.payload), MAX_FRAME_PAYLOAD)
    if not 0 <= frame.chunk_index < 1 << 32:
        raise FrameError(f"chunk index {frame.chunk_index} does not fit a frame header")
    header = FRAME_HEADER.pack(
        FRAME_MAGIC,
        PROTOCOL_VERSION,
        int(frame.flags),
        int(frame.codec),
        _blob_bytes(frame.blob_id),
        frame.chunk_index,
        len(frame.payload),
    )
    return header + frame.payload


def _blob_bytes(blob_id: str) -> bytes:
    if len(blob_id) != 64 or blob_id != blob_id.lower():
        raise FrameError(f"blob id {blob_id!r} is not 64 lowercase hex digits")
    try:
        return bytes.fromhex(blob_id)
    except ValueError:
        raise FrameError(f"blob id {blob_id!r} is not 64 lowercase hex digits") from None


@dataclass(frozen=True, slots=True)
class _Header:
    blob_id: str
    chunk_index: int
    length: int
    codec: Codec
    flags: FrameFlags


def _parse_header(raw: bytes | bytearray, max_payload: int) -> _Header:
    magic, version, flags, codec, blob, index, length = FRAME_HEADER.unpack_from(raw)
    if magic != FRAME_MAGIC:
        raise BadFrameMagic(bytes(magic))
    if version != PROTOCOL_VERSION:
        raise UnsupportedVersion(version, PROTOCOL_VERSION)
    if flags & ~int(_KNOWN_FLAGS):
        raise FrameError(f"unknown frame flags {flags:#04x}")
    if codec not in Codec._value2member_map_:
        raise FrameError(f"unknown frame codec {codec}")
    if length > max_payload:
        raise FrameTooLarge(length, max_payload)
    return _Header(blob.hex(), index, length, Codec(codec), FrameFlags(flags))


class FrameDecoder:
    """Incremental decoder: `feed` bytes in any split, get whole frames back."""

    def __init__(self, max_payload: int = MAX_FRAME_PAYLOAD) -> None:
        self._buffer = bytearray()
        self._header: _Header | None = None
        self._max_payload = max_payload
        self._error: FrameError | UnsupportedVersion | None = None

    def feed(self, data: bytes | bytearray | memoryview) -> list[Frame]:
        """Buffer `data` and return every frame it completes, in order."""
        if self._error is not None:
            raise self._error
        self._buffer += data
        frames: list[Frame] = []
        try:
            while (frame := self._next_frame()) is not None:
                frames.append(frame)
        except (FrameError, UnsupportedVersion) as exc:
            self._error = exc
            raise
        return frames

    def _next_frame(self) -> Frame | None:
        if self._header is None:
            if len(self._buffer) < FRAME_HEADER.size:
                return None
            self._header = _parse_header(self._buffer, self._max_payload)
            del self._buffer[: FRAME_HEADER.size]
        header = self._header
        if len(self._buffer) < header.length:
            return None
        payload = bytes(self._buffer[: header.length])
        del self._buffer[: header.length]
        self._header = None
        return Frame(header.blob_id, header.chunk_index, payload, header.codec, header.flags)

    @property
    def pending(self) -> int:
        """Bytes buffered toward a frame not yet complete."""
        return len(self._buffer) + (FRAME_HEADER.size if self._header is not None else 0)

    def close(self) -> None:
        """The stream ended: refuse a half-received frame."""
        if self.pending:
            raise TruncatedFrame(self.pending)
