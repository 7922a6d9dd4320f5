"""Blob backends: byte ranges of blobs as stored, from a registry or a directory.

The rule they keep: `read` returns exactly the bytes asked for or raises; a blob that is
not there is `BlobMissing`, a range past its end is `BlobRangeError`, each naming the blob
and the range. No backend checks chunk digests: that is `OriginSource`'s job.
(The S3-compatible backend lives in `_s3.py`, so that importing rafs does not load botocore.)
"""

from __future__ import annotations

import asyncio
import errno
import os
import re
from pathlib import Path

from ._errors import BlobMissing, RafsError
from ._registry import NotFound, RegistryClient

_BLOB_ID = re.compile(r"[0-9a-f]{64}")


class BlobRangeError(RafsError):
    """A read asked for bytes a blob does not have."""

    def __init__(self, blob_id: str, offset: int, length: int, size: int | None) -> None:
        have = f"; it has {size} bytes" if size is not None else ""
        super().__init__(f"blob {blob_id}: cannot read {length} bytes at offset {offset}{have}")
        self.blob_id = blob_id
        self.offset = offset
        self.length = length
        self.size = size


def check_blob_id(blob_id: str) -> str:
    """Blob ids are sha256 hex; anything else (a path, a traversal) is refused."""
    if not _BLOB_ID.fullmatch(blob_id):
        raise BlobMissing(f"not a blob id (sha256 hex expected): {blob_id!r}")
    return blob_id


class RegistryBackend:
    """Blobs of one repository; blob id `X` is the registry blob `sha256:X`."""

    def __init__(self, client: RegistryClient, repo: str, *, own_client: bool = False) -> None:
        self.client = client
        self.repo = repo
        self.own_client = own_client

    async def read(self, blob_id: str, offset: int, length: int) -> bytes:
        digest = "sha256:" + check_blob_id(blob_id)
        try:
            return await self.client.get_blob(self.repo, digest, range=(offset, length))
        except NotFound as exc:
            raise BlobMissing(f"blob {blob_id} not in {self.repo}: {exc}") from exc

    async def blob_size(self, blob_id: str) -> int:
        digest = "sha256:" + check_blob_id(blob_id)
        try:
            return await self.client.head_blob(self.repo, digest)
        except NotFound as exc:
            raise BlobMissing(f"blob {blob_id} not in {self.repo}: {exc}") from exc

    async def close(self) -> None:
        if self.own_client:
            await self.client.close()


class LocalDirBackend:
    """A directory (a NAS mount, a `--blob-dir`) of blobs named by their id."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)

    def path(self, blob_id: str) -> Path:
        return self.directory / check_blob_id(blob_id)

    async def read(self, blob_id: str, offset: int, length: int) -> bytes:
        return await asyncio.to_thread(self._pread, blob_id, offset, length)

    async def blob_size(self, blob_id: str) -> int:
        return await asyncio.to_thread(self._size, blob_id)

    async def close(self) -> None:
        return None

    def _pread(self, blob_id: str, offset: int, length: int) -> bytes:
        fd = self._open(blob_id)
        try:
            data = _pread_exactly(fd, offset, length)
            if len(data) != length:
                raise BlobRangeError(blob_id, offset, length, os.fstat(fd).st_size)
            return data
        finally:
            os.close(fd)

    def _size(self, blob_id: str) -> int:
        fd = self._open(blob_id)
        try:
            return os.fstat(fd).st_size
        finally:
            os.close(fd)

    def _open(self, blob_id: str) -> int:
        path = self.path(blob_id)
        try:
            return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise BlobMissing(f"blob {blob_id} not in {self.directory}") from None
        except OSError as exc:
            reason = errno.errorcode.get(exc.errno or 0, str(exc.errno))
            raise BlobMissing(f"blob {blob_id} in {self.directory}: {reason} {exc}") from exc


def _pread_exactly(fd: int, offset: int, length: int) -> bytes:
    """Up to `length` bytes; shorter only at the end of the file."""
    parts: list[bytes] = []
    while length:
        piece = os.pread(fd, length, offset)
        if not piece:
            break
        parts.append(piece)
        offset += len(piece)
        length -= len(piece)
    return b"".join(parts)
