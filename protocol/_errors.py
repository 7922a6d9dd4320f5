"""The one exception tree of `protocol`.

Everything that can go wrong while reading a message or a chunk frame raises a
`ProtocolError`; third-party (msgspec) exceptions are translated in `_codec` and never
leave this package. Each error carries the offending value or field path.
"""

from __future__ import annotations

__all__ = [
    "BadFrameMagic",
    "FrameError",
    "FrameTooLarge",
    "InvalidMessage",
    "MessageTooLarge",
    "ProtocolError",
    "TruncatedFrame",
    "UnsupportedVersion",
]


class ProtocolError(Exception):
    """Base of every error raised while decoding or validating protocol data."""


class InvalidMessage(ProtocolError, ValueError):
    """A message is malformed: bad syntax, wrong type, missing or unknown field.

    `path` is the JSON-path-like location msgspec reports (`$.ranges[3][1]`), or `$`
    when the whole document is at fault.
    """

    def __init__(self, reason: str, path: str = "$") -> None:
        super().__init__(f"{reason} (at {path})" if path != "$" else reason)
        self.reason = reason
        self.path = path


class MessageTooLarge(ProtocolError):
    """A message or frame is larger than the configured byte limit."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"message of {size} bytes exceeds the limit of {limit} bytes")
        self.size = size
        self.limit = limit


class UnsupportedVersion(ProtocolError):
    """A message or frame names a protocol version this code does not speak."""

    def __init__(self, found: int, supported: int) -> None:
        super().__init__(
            f"protocol version {found} is not supported (this side speaks {supported})"
        )
        self.found = found
        self.supported = supported


class FrameError(ProtocolError):
    """A chunk frame header is invalid."""


class BadFrameMagic(FrameError):
    """The bytes at a frame boundary do not start with the frame magic."""

    def __init__(self, found: bytes) -> None:
        super().__init__(f"bad frame magic {found!r}")
        self.found = found


class FrameTooLarge(FrameError, MessageTooLarge):
    """A frame announces a payload longer than the decoder accepts."""


class TruncatedFrame(FrameError):
    """The stream ended in the middle of a frame."""

    def __init__(self, buffered: int) -> None:
        super().__init__(f"stream ended with {buffered} bytes of an incomplete frame")
        self.buffered = buffered
