"""The exception tree of the image format.

Every failure the format code raises is a `RafsError`; each subclass carries the value
it found, so the command line can print one clear line and tests can match on the type.
"""

from __future__ import annotations


class RafsError(Exception):
    """Base of every error raised by `rafs`."""


class CorruptBootstrap(RafsError):
    """A bootstrap failed a structural check; the message names the field and its value."""

    def __init__(self, what: str, value: object, offset: int | None = None) -> None:
        where = f" at offset {offset}" if offset is not None else ""
        super().__init__(f"corrupt bootstrap: {what} = {value!r}{where}")
        self.what = what
        self.value = value
        self.offset = offset


class UnsupportedFormat(RafsError):
    """The input is well formed but uses a layout or feature this reader does not handle."""


class ChunkDigestMismatch(RafsError):
    """A chunk's bytes do not hash to the digest the bootstrap records for it."""

    def __init__(self, blob_id: str, chunk_index: int, expected: bytes, actual: bytes) -> None:
        super().__init__(
            f"chunk digest mismatch: blob {blob_id} chunk {chunk_index} "
            f"expected {expected.hex()} actual {actual.hex()}"
        )
        self.blob_id = blob_id
        self.chunk_index = chunk_index
        self.expected = expected
        self.actual = actual


class BlobMissing(RafsError):
    """A blob the bootstrap refers to is not where it was looked for."""


class BuildError(RafsError):
    """The builder refused its input (an escaping path, a bad option, an unreadable source)."""


class CheckFailed(RafsError):
    """`check` found a digest, size or structure that does not match."""
