"""The chunk service over a libp2p stream (`/nydus-mesh/chunk/1`), declared once for the
server and its clients; sans-IO.

One stream carries one request, the same as the HTTP one (`_wire`): the client writes a
*head*, an unsigned-varint length then a msgpack `ChunkRequest` (blob id, start, end).
The server answers with a head of its own, a `ChunkAnswer` whose status plays the HTTP
status (`ok`, `bad_request`, `not_found`, `busy`), and after `ok` the same `protocol` chunk
frames as the HTTP body: one per chunk held, in index order, the last flagged LAST. Then
it closes the stream.

Rule: a head is at most `MAX_HEAD_BYTES`; anything else on the stream is a chunk frame,
and the receiver verifies every chunk, as over HTTP.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Generic, TypeVar

import msgspec

from protocol import FailureKind, ProtocolError

PROTOCOL_ID = "/nydus-mesh/chunk/1"
MAX_HEAD_BYTES = 4096


class Status(StrEnum):
    OK = "ok"
    BAD_REQUEST = "bad_request"
    NOT_FOUND = "not_found"
    BUSY = "busy"


class ChunkRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Chunks `[start, end)` of a blob, by index (checked like the HTTP query)."""

    blob_id: str
    start: int
    end: int


class ChunkAnswer(msgspec.Struct, frozen=True):
    """Whether chunk frames follow; `detail` says why not."""

    status: Status
    detail: str = ""

    @property
    def failure(self) -> FailureKind:
        """The failure kind a fetcher reports for this answer (`NONE` for ok)."""
        return _FAILURES.get(self.status, FailureKind.PROTOCOL)


_FAILURES = {
    Status.OK: FailureKind.NONE,
    Status.NOT_FOUND: FailureKind.NOT_FOUND,
    Status.BUSY: FailureKind.BUSY,
}
_ENCODER = msgspec.msgpack.Encoder()

H = TypeVar("H", ChunkRequest, ChunkAnswer)


class BadHead(ProtocolError):
    """A request or answer head that is too long or not the message expected."""


def encode_head(head: ChunkRequest | ChunkAnswer) -> bytes:
    body = _ENCODER.encode(head)
    return uvarint(len(body)) + body


def uvarint(value: int) -> bytes:
    """The unsigned LEB128 varint of libp2p length prefixes."""
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


class HeadDecoder(Generic[H]):
    """Bytes in any split until one head is whole; `rest` holds what followed it."""

    def __init__(self, kind: type[H]) -> None:
        self._decoder: msgspec.msgpack.Decoder[H] = msgspec.msgpack.Decoder(kind)
        self._buffer = bytearray()
        self.rest = b""

    def feed(self, data: bytes) -> H | None:
        """The head once complete (then `rest` is set), else None."""
        self._buffer += data
        found = _split_length(self._buffer)
        if found is None:
            return None
        length, offset = found
        if len(self._buffer) < offset + length:
            return None
        body = bytes(self._buffer[offset : offset + length])
        self.rest = bytes(self._buffer[offset + length :])
        try:
            return self._decoder.decode(body)
        except msgspec.DecodeError as exc:  # ValidationError is a DecodeError
            raise BadHead(f"bad head: {exc}") from exc


def _split_length(buffer: bytearray) -> tuple[int, int] | None:
    """`(length, bytes the varint took)`, None while the varint is incomplete."""
    value = 0
    for n, byte in enumerate(buffer[:3]):  # 3 varint bytes reach far past MAX_HEAD_BYTES
        value |= (byte & 0x7F) << (7 * n)
        if not byte & 0x80:
            if value > MAX_HEAD_BYTES:
                raise BadHead(f"head of {value} bytes exceeds {MAX_HEAD_BYTES}")
            return value, n + 1
    if len(buffer) >= 3:
        raise BadHead(f"head length varint {bytes(buffer[:3]).hex()} is too long")
    return None
