"""Fetching chunk frames from a parent over libp2p, and choosing a transport per parent.

`Libp2pTransport` is a `ChunkTransport` (see `_parentclient`): it dials the parent's
`/p2p/` multiaddr through the daemon's `Libp2pHost` (noise authenticates the parent's peer
id against the one in its address) and hands out frames as they complete. Each read is one
call across the trio bridge, so the asyncio side pulls bytes only as fast as it decodes
them. `PreferredTransport` sends each parent to the preferred transport when the parent
offers it, else to the other one (and to the other one too when the first cannot connect).

Rule: this is the one place where libp2p, trio and bridge exceptions met while talking to
a parent become `ParentError`s: a deadline is `timeout`, a bad head or frame is `protocol`,
an answer is its own kind (`not_found`, `busy`), anything else from the network `connect`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, Iterator
from contextlib import aclosing, contextmanager
from typing import Any, Literal

import trio

from protocol import FailureKind, Frame, FrameDecoder, Parent, ProtocolError

from ._errors import ParentError
from ._libp2p_host import Libp2pHost
from ._libp2p_wire import ChunkRequest, Status
from ._parentclient import ChunkTransport

log = logging.getLogger("dfdaemon.libp2p")

TransportName = Literal["http", "libp2p"]


class Libp2pTransport:
    """Chunks over `/nydus-mesh/chunk/1` from the first `/p2p/` multiaddr a parent offers."""

    def __init__(
        self, host: Libp2pHost, connect_timeout: float = 2.0, idle_timeout: float = 5.0
    ) -> None:
        self.host = host
        self.connect_timeout = connect_timeout
        self.idle_timeout = idle_timeout

    async def close(self) -> None:
        """Nothing to close: the host belongs to the daemon, which stops it."""

    async def fetch(
        self, parent: Parent, blob_id: str, start: int, end: int, timeout: float
    ) -> AsyncGenerator[Frame, None]:
        addr = p2p_address(parent)
        if addr is None:
            raise ParentError(parent.peer_id, blob_id, FailureKind.CONNECT, "no /p2p multiaddr")
        deadline = asyncio.get_running_loop().time() + timeout
        request = ChunkRequest(blob_id, start, end)
        with _translated(parent.peer_id, blob_id, f"chunks [{start}, {end}) over libp2p"):
            call = self.host.bridge.call
            opened = await call(self.host.open_chunks, addr, request, self.connect_timeout,
                                self._left(deadline))  # fmt: skip
            stream, answer, rest = opened
            whole = False
            try:
                if answer.status is not Status.OK:
                    raise ParentError(parent.peer_id, blob_id, answer.failure,
                                      f"{answer.status} for chunks [{start}, {end}): "
                                      f"{answer.detail}")  # fmt: skip
                decoder, piece = FrameDecoder(), rest
                while True:
                    for frame in decoder.feed(piece):
                        self.host.metrics.frame_bytes_in.inc(len(frame.payload))
                        yield frame
                        if frame.last:
                            whole = True
                            return
                    piece = await call(self.host.read, stream, self._left(deadline))
                    if not piece:
                        decoder.close()
                        raise ProtocolError("the stream ended without a LAST frame")
            finally:
                await _release(self.host, stream, whole)

    def _left(self, deadline: float) -> float:
        """Seconds the next step may take: the idle limit, within the whole deadline."""
        left = deadline - asyncio.get_running_loop().time()
        return max(0.0, min(self.idle_timeout, left))


async def _release(host: Libp2pHost, stream: Any, whole: bool) -> None:
    """Close (or reset) the stream, even when the fetch was cancelled."""
    release = asyncio.ensure_future(host.bridge.call(host.release, stream, whole))
    try:
        await asyncio.shield(release)
    except asyncio.CancelledError:
        raise
    except Exception:  # the stream or the thread is already gone: nothing to release
        pass


def p2p_address(parent: Parent) -> str | None:
    """The first multiaddr of the parent that names its libp2p peer id."""
    return next((addr for addr in parent.multiaddrs if "/p2p/" in addr), None)


@contextmanager
def _translated(parent_id: str, blob_id: str, what: str) -> Iterator[None]:
    try:
        yield
    except ParentError:
        raise
    except ProtocolError as exc:
        raise ParentError(parent_id, blob_id, FailureKind.PROTOCOL, f"{what}: {exc}") from exc
    except (trio.TooSlowError, TimeoutError) as exc:
        raise ParentError(parent_id, blob_id, FailureKind.TIMEOUT, f"{what}: timed out") from exc
    except Exception as exc:  # libp2p, multiaddr and the bridge share no base class
        detail = f"{what}: {type(exc).__name__}: {exc}"
        raise ParentError(parent_id, blob_id, FailureKind.CONNECT, detail) from exc


class PreferredTransport:
    """Each parent over `preferred` when it offers that transport, else over the other; a
    parent that cannot be reached (`connect`) over one it offers both on is tried over the
    other before anything is reported."""

    def __init__(
        self, http: ChunkTransport, libp2p: Libp2pTransport, preferred: TransportName
    ) -> None:
        self.http = http
        self.libp2p = libp2p
        self.preferred = preferred

    def choose(self, parent: Parent) -> ChunkTransport:
        has_p2p = p2p_address(parent) is not None
        if self.preferred == "libp2p":
            return self.libp2p if has_p2p or parent.http_url is None else self.http
        return self.http if parent.http_url is not None or not has_p2p else self.libp2p

    def _other(self, used: ChunkTransport, parent: Parent) -> ChunkTransport | None:
        if used is self.libp2p:
            return self.http if parent.http_url is not None else None
        return self.libp2p if p2p_address(parent) is not None else None

    async def fetch(
        self, parent: Parent, blob_id: str, start: int, end: int, timeout: float
    ) -> AsyncGenerator[Frame, None]:
        first = self.choose(parent)
        delivered = False
        try:
            async with aclosing(first.fetch(parent, blob_id, start, end, timeout)) as frames:
                async for frame in frames:
                    delivered = True
                    yield frame
            return
        except ParentError as exc:
            other = self._other(first, parent)
            if delivered or other is None or exc.kind is not FailureKind.CONNECT:
                raise
            log.info("%s; trying the parent's other transport", exc)
        async with aclosing(other.fetch(parent, blob_id, start, end, timeout)) as frames:
            async for frame in frames:
                yield frame

    async def close(self) -> None:
        await self.http.close()
        await self.libp2p.close()
