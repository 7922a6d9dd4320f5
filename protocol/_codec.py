"""Encoding and decoding of messages, JSON or msgpack.

Rule: this is the one place msgspec exceptions are caught; they leave as `ProtocolError`
subclasses carrying the field path. Size is checked before parsing, version after (a
message of another version that fails to parse is still reported as `UnsupportedVersion`).
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any, Literal, TypeVar, overload

import msgspec

from ._errors import InvalidMessage, MessageTooLarge, ProtocolError, UnsupportedVersion
from ._messages import AnyMessage, Message
from ._types import MAX_MESSAGE_BYTES, PROTOCOL_VERSION

__all__ = ["Format", "decode", "encode"]

Format = Literal["json", "msgpack"]
M = TypeVar("M", bound=Message)

# msgspec says "<reason> - at `$.outer`"; our own checks add "(at $.inner)" to the reason,
# relative to the struct that raised them.
_PATH = re.compile(
    r"^(?P<reason>.*?)(?: \(at (?P<inner>\$[^)]*)\))?(?: - at `(?P<outer>\$[^`]*)`)?$", re.DOTALL
)
_JSON_ENCODER = msgspec.json.Encoder()
_MSGPACK_ENCODER = msgspec.msgpack.Encoder()


class _VersionProbe(msgspec.Struct):
    """Reads only `version`, tolerating everything else."""

    version: int = PROTOCOL_VERSION


def encode(msg: Message, fmt: Format = "json") -> bytes:
    """Serialize a message (always carrying its `type` tag and `version`)."""
    if fmt == "json":
        return _JSON_ENCODER.encode(msg)
    if fmt == "msgpack":
        return _MSGPACK_ENCODER.encode(msg)
    raise ValueError(f"unknown format {fmt!r}")


@lru_cache(maxsize=64)
def _decoder(fmt: Format, target: Any) -> msgspec.json.Decoder[Any] | msgspec.msgpack.Decoder[Any]:
    if fmt == "json":
        return msgspec.json.Decoder(target)
    if fmt == "msgpack":
        return msgspec.msgpack.Decoder(target)
    raise ValueError(f"unknown format {fmt!r}")


@overload
def decode(data: bytes | bytearray | memoryview, fmt: Format, type: type[M]) -> M: ...
@overload
def decode(data: bytes | bytearray | memoryview, fmt: Format = "json") -> Message: ...
def decode(
    data: bytes | bytearray | memoryview,
    fmt: Format = "json",
    type: Any = AnyMessage,
) -> Any:
    """Parse and validate one message; any failure is a `ProtocolError`.

    `type` is one message class, or a union of them (every envelope by default).
    """
    if len(data) > MAX_MESSAGE_BYTES:
        raise MessageTooLarge(len(data), MAX_MESSAGE_BYTES)
    try:
        msg = _decoder(fmt, type).decode(data)
    except msgspec.DecodeError as exc:
        raise _translate(exc, data, fmt) from None
    _check_version(msg.version)
    return msg


def _check_version(version: int) -> None:
    if version != PROTOCOL_VERSION:
        raise UnsupportedVersion(version, PROTOCOL_VERSION)


def _translate(
    exc: msgspec.DecodeError, data: bytes | bytearray | memoryview, fmt: Format
) -> ProtocolError:
    """Turn a msgspec error into ours; a foreign version outranks a shape error."""
    version = _probe_version(data, fmt)
    if version is not None and version != PROTOCOL_VERSION:
        return UnsupportedVersion(version, PROTOCOL_VERSION)
    match = _PATH.match(str(exc))
    assert match is not None  # the pattern matches any string
    path = (match["outer"] or "$") + (match["inner"] or "$")[1:]
    return InvalidMessage(match["reason"], path)


def _probe_version(data: bytes | bytearray | memoryview, fmt: Format) -> int | None:
    try:
        return _decoder(fmt, _VersionProbe).decode(data).version  # type: ignore[no-any-return]
    except msgspec.DecodeError:
        return None
