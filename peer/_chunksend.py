"""Chunk frames sent without passing the payload through Python: each frame's 48-byte header
is written from Python, its payload goes from the cache's data file to the socket by
`sendfile`, and the response's Content-Length is known before the first byte.

Rule: only the records of a `ChunkLease` are sent, while it is open: their bits were set and
their records read the same under shared locks on their spans, and those locks stay held
until every byte of the response has been handed to the kernel, so no writer can clear a
bit or rewrite a span while it is being sent. (After `sendfile` returns, the kernel may
still refer to the page-cache pages until the peer reads them; a span is only ever
rewritten after its bit was cleared, with the same blob's bytes at the same offset, and the
receiver verifies every chunk's digest.) A chunk the socket has not taken after
`SEND_TIMEOUT_SECONDS` aborts the connection, so a stalled client cannot hold the locks.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Sequence

from aiohttp import hdrs, web

from protocol import (
    FRAME_HEADER,
    FRAME_MAGIC,
    MAX_FRAME_PAYLOAD,
    PROTOCOL_VERSION,
    Codec,
    FrameFlags,
    FrameTooLarge,
)
from rafs._cache import ChunkLease
from rafs._chunkmap import ChunkRecord

from ._metrics import PeerMetrics
from ._wire import CHUNKS_MEDIA_TYPE

log = logging.getLogger("dfdaemon.upload")

SEND_TIMEOUT_SECONDS = 60.0  # a socket that takes no bytes this long is given up


def frame_header(blob_id: str, record: ChunkRecord, codec: Codec, flags: FrameFlags) -> bytes:
    """The header `encode_frame` puts before this record's payload."""
    if record.compressed_size > MAX_FRAME_PAYLOAD:
        raise FrameTooLarge(record.compressed_size, MAX_FRAME_PAYLOAD)
    blob = bytes.fromhex(blob_id)  # the caller checked: 64 lowercase hex digits
    return FRAME_HEADER.pack(FRAME_MAGIC, PROTOCOL_VERSION, int(flags), int(codec), blob,
                             record.index, record.compressed_size)  # fmt: skip


async def send_leased(
    request: web.Request, lease: ChunkLease, headers: Sequence[bytes], metrics: PeerMetrics
) -> web.StreamResponse:
    """A 200 of `lease.records` as frames, the i-th prefixed by `headers[i]`."""
    response = web.StreamResponse(headers={"Content-Type": CHUNKS_MEDIA_TYPE})
    response.content_length = sum(
        len(h) + r.compressed_size for h, r in zip(headers, lease.records, strict=True)
    )
    try:
        await _write_frames(request, response, lease, headers, metrics)
    except ConnectionError as exc:  # the client went away, or the body cannot be whole
        log.debug("upload of blob chunks to %s ended early: %s", request.remote, exc)
        if request.transport is not None:
            request.transport.abort()  # never reused after a short body
    return response


async def _write_frames(
    request: web.Request,
    response: web.StreamResponse,
    lease: ChunkLease,
    headers: Sequence[bytes],
    metrics: PeerMetrics,
) -> None:
    if request.transport is None:
        raise ConnectionResetError("the client went away before the answer")
    await response.prepare(request)
    if request.method == hdrs.METH_HEAD:  # the head alone: no byte of body may follow
        await response.write_eof()
        return
    with _SocketSender(request.transport) as sender:
        for header, record in zip(headers, lease.records, strict=True):
            await response.write(header)
            await sender.send_span(lease.data_fd, record.compressed_offset, record.compressed_size)
            metrics.peer_bytes_out.inc(record.compressed_size)
            metrics.peer_chunks_out.inc()
    await response.write_eof()


class _SocketSender:
    """Payloads straight onto the socket under an aiohttp response, in order after what the
    response wrote through its transport.

    The socket is not corked (TCP_CORK) around a frame: measured on loopback, corked sends
    cost 500 us of server CPU per 1 MiB chunk, uncorked 200-370 us. The event loop will not
    watch a descriptor a transport owns (asyncio's and uvloop's refuse; uvloop has no
    `loop.sendfile`), so writability is awaited on a duplicate of it (the same socket).
    """

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        self._sock: socket.socket = transport.get_extra_info("socket")
        self._fd = self._sock.fileno()
        self._watch_fd = -1

    def __enter__(self) -> _SocketSender:
        return self

    def __exit__(self, *_: object) -> None:
        if self._watch_fd != -1:
            os.close(self._watch_fd)

    async def send_span(self, file_fd: int, offset: int, count: int) -> None:
        """`count` bytes of the file from `offset`, once the transport has sent its own."""
        while self._transport.get_write_buffer_size():
            await self._writable()
        while count:
            try:
                sent = os.sendfile(self._fd, file_fd, offset, count)
            except BlockingIOError:
                await self._writable()
                continue
            if not sent:  # the promised length cannot be met: cut the connection
                log.warning("cache data file ends before offset %d", offset + count)
                self._transport.abort()
                raise ConnectionResetError(f"the cache file ends before offset {offset + count}")
            offset, count = offset + sent, count - sent

    async def _writable(self) -> None:
        """Return once the socket takes bytes again; abort after SEND_TIMEOUT_SECONDS."""
        if self._watch_fd == -1:
            self._watch_fd = os.dup(self._fd)
        loop = asyncio.get_running_loop()
        ready = loop.create_future()
        loop.add_writer(self._watch_fd, _wake, ready)
        try:
            async with asyncio.timeout(SEND_TIMEOUT_SECONDS):
                await ready
        except TimeoutError:
            self._transport.abort()
            raise ConnectionResetError(f"no progress sending for {SEND_TIMEOUT_SECONDS}s") from None
        finally:
            loop.remove_writer(self._watch_fd)


def _wake(ready: asyncio.Future[None]) -> None:
    if not ready.done():  # the loop may call a writer again before it is removed
        ready.set_result(None)
