"""Fetching chunk frames from a parent: the HTTP transport of the mesh fetcher.

Rule: this is the one place where aiohttp and frame-decoding exceptions met while talking
to a parent become `ParentError`s, each with the `FailureKind` the supernode is told
(connect, timeout, busy, not_found, protocol). Frames are handed out as they complete, so
a fetcher keeps the chunks that arrived before a parent died. A transport is a class with
`fetch`; a libp2p transport can stand beside this one.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Iterator
from contextlib import contextmanager
from typing import Protocol

import aiohttp

from protocol import FailureKind, Frame, FrameDecoder, Parent, ProtocolError

from ._errors import ParentError
from ._wire import chunks_url

READ_PIECE = 256 << 10


class ChunkTransport(Protocol):
    def fetch(
        self, parent: Parent, blob_id: str, start: int, end: int, timeout: float
    ) -> AsyncGenerator[Frame, None]:
        """Frames of the chunks `[start, end)` the parent holds, as they arrive."""
        ...

    async def close(self) -> None: ...


class HttpChunkTransport:
    """Chunks over HTTP/1.1 from a parent's `http_url`, connections pooled per parent."""

    def __init__(self, connect_timeout: float = 2.0, idle_timeout: float = 5.0) -> None:
        self.connect_timeout = connect_timeout
        self.idle_timeout = idle_timeout
        self._session: aiohttp.ClientSession | None = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(limit=0, limit_per_host=16)
            self._session = aiohttp.ClientSession(connector=connector, auto_decompress=False)
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def fetch(
        self, parent: Parent, blob_id: str, start: int, end: int, timeout: float
    ) -> AsyncGenerator[Frame, None]:
        if parent.http_url is None:
            raise ParentError(parent.peer_id, blob_id, FailureKind.CONNECT, "no http_url")
        url = chunks_url(parent.http_url, blob_id, start, end)
        limits = aiohttp.ClientTimeout(
            total=timeout, sock_connect=self.connect_timeout, sock_read=self.idle_timeout
        )
        with _translated(parent.peer_id, blob_id, f"chunks [{start}, {end})"):
            async with self._http().get(url, timeout=limits) as response:
                _check_status(response.status, parent.peer_id, blob_id, start, end)
                async for frame in _frames(response):
                    yield frame


def _check_status(status: int, parent_id: str, blob_id: str, start: int, end: int) -> None:
    if status == 200:
        return
    kind = {404: FailureKind.NOT_FOUND, 503: FailureKind.BUSY, 429: FailureKind.BUSY}.get(
        status, FailureKind.PROTOCOL
    )
    raise ParentError(parent_id, blob_id, kind, f"HTTP {status} for chunks [{start}, {end})")


async def _frames(response: aiohttp.ClientResponse) -> AsyncIterator[Frame]:
    decoder = FrameDecoder()
    async for piece in response.content.iter_chunked(READ_PIECE):
        for frame in decoder.feed(piece):
            yield frame
            if frame.last:
                return
    decoder.close()
    raise ProtocolError("the response ended without a LAST frame")


@contextmanager
def _translated(parent_id: str, blob_id: str, what: str) -> Iterator[None]:
    try:
        yield
    except ParentError:
        raise
    except ProtocolError as exc:
        raise ParentError(parent_id, blob_id, FailureKind.PROTOCOL, f"{what}: {exc}") from exc
    except TimeoutError as exc:
        raise ParentError(parent_id, blob_id, FailureKind.TIMEOUT, f"{what}: timed out") from exc
    except (aiohttp.ClientError, OSError) as exc:
        detail = f"{what}: {type(exc).__name__}: {exc}"
        raise ParentError(parent_id, blob_id, FailureKind.CONNECT, detail) from exc
