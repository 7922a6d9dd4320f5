"""The daemon's libp2p host: `/nydus-mesh/chunk/1` over TCP with noise and yamux, living in
its own trio thread (`_libp2p_bridge.TrioThread`).

Everything here that awaits runs on trio. The asyncio side reaches it only through the
bridge: `Libp2pTransport` calls `open_chunks`, `read` and `release`; the stream handler
calls back into asyncio only for the upload slots and the rate limiter, which it shares
with the HTTP server (so both transports together stay within `--upload-slots` and
`--upload-limit`). Chunks are read from the cache directly in trio worker threads:
`BlobCache` is synchronous and thread-safe (the HTTP server calls it from asyncio's worker
threads the same way), and `read_indexed` serves a chunk only while its bit is set and its
index record unchanged.

Rule: a chunk leaves this host only as the HTTP server would send it (same checks, same
frames); the handler never lets an exception into libp2p: a broken stream is reset.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import multiaddr
import trio
from libp2p import new_host
from libp2p.abc import IHost, INetStream
from libp2p.crypto.keys import KeyPair
from libp2p.crypto.x25519 import create_new_key_pair as new_x25519_pair
from libp2p.custom_types import TProtocol
from libp2p.network.config import ConnectionConfig
from libp2p.network.stream.exceptions import StreamEOF
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import info_from_p2p_addr
from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_PROTOCOL_ID
from libp2p.security.noise.transport import Transport as NoiseTransport
from prometheus_client import Counter

from protocol import Frame, FrameFlags, ProtocolError, encode_frame
from rafs._cache import BlobCache

from ._chunkserver import READ_GROUP_BYTES, UploadSlots, _codec, _groups
from ._errors import UsageError
from ._libp2p_bridge import TrioThread
from ._libp2p_wire import (
    PROTOCOL_ID,
    ChunkAnswer,
    ChunkRequest,
    H,
    HeadDecoder,
    Status,
    encode_head,
)
from ._metrics import PeerMetrics
from ._wire import BadChunkRequest, parse_run

log = logging.getLogger("dfdaemon.libp2p")

READ_PIECE = 256 << 10
REQUEST_TIMEOUT = 5.0  # a client has this long to send its request head
CLOSE_TIMEOUT = 3.0  # shutting the host down, or giving an upload slot back
CHUNK_PROTOCOL = TProtocol(PROTOCOL_ID)


class Libp2pMetrics:
    """Bytes over libp2p, beside the daemon's totals (which count both transports)."""

    def __init__(self, metrics: PeerMetrics) -> None:
        r = metrics.registry
        self.peer = metrics
        self.bytes_out = Counter(
            "dfdaemon_libp2p_bytes_out", "chunk bytes served over libp2p", registry=r
        )
        self.frame_bytes_in = Counter(
            "dfdaemon_libp2p_frame_bytes_in",
            "chunk bytes received over libp2p (before verification)",
            registry=r,
        )


@dataclass(frozen=True)
class ChunkService:
    """What the stream handler serves from: the HTTP server's cache, slots and metrics."""

    cache: BlobCache
    uploads: UploadSlots


class Libp2pHost:
    """One libp2p host (identity `key`) listening on `listen`, in its own trio thread."""

    def __init__(
        self,
        key: KeyPair,
        listen: str,
        metrics: PeerMetrics,
        *,
        service: ChunkService | None = None,
        advertise_ip: str | None = None,
    ) -> None:
        self.key = key
        self.listen = parse_multiaddr(listen)
        self.peer_id = ID.from_pubkey(key.public_key).to_base58()
        self.metrics = Libp2pMetrics(metrics)
        self.bridge = TrioThread(f"libp2p-{self.peer_id[-8:]}")
        self.advertise_ip = advertise_ip
        self.addrs: tuple[str, ...] = ()
        self._service = service
        self._host: IHost | None = None
        self._stopping = trio.Event()
        self._stopped = trio.Event()

    # --- lifetime (called from the asyncio side) ---------------------------------------------

    def start(self, loop: asyncio.AbstractEventLoop, timeout: float = 10.0) -> None:
        """Start the trio thread and listen; blocks until listening (or fails)."""
        logging.getLogger("libp2p").propagate = True  # into the daemon's log, not stderr
        self.bridge.start(loop, timeout)
        try:
            self.bridge.run_blocking(self._start, timeout=timeout)
        except BaseException:
            self.bridge.stop()
            raise
        log.info("libp2p %s listening on %s", self.peer_id, ", ".join(self.addrs))

    async def aclose(self) -> None:
        """Close the host (connections first), then stop the thread; from asyncio."""
        if self.bridge.running:
            try:
                await self.bridge.call(self._shutdown)
            except Exception as exc:  # a host that died already: the thread still stops
                log.warning("closing libp2p %s: %s", self.peer_id, exc)
        await self.bridge.aclose(CLOSE_TIMEOUT + 2)

    def close(self) -> None:
        """`aclose` for synchronous code (not on the asyncio loop's thread)."""
        if self.bridge.running:
            try:
                self.bridge.run_blocking(self._shutdown, timeout=CLOSE_TIMEOUT + 2)
            except Exception as exc:
                log.warning("closing libp2p %s: %s", self.peer_id, exc)
        self.bridge.stop(CLOSE_TIMEOUT + 2)

    # --- trio side ---------------------------------------------------------------------------

    async def _start(self) -> None:
        await self.bridge.nursery.start(self._serve)

    async def _serve(self, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Run the host until `_shutdown`; closing it uncancelled, so that every connection
        is closed in order (cancelling libp2p's tasks instead leaks their sockets)."""
        host = self._new_host()
        try:
            async with host.run([self.listen]):
                if self._service is not None:
                    handler = ChunkStreamHandler(self._service, self.bridge, self.metrics)
                    host.set_stream_handler(CHUNK_PROTOCOL, handler.handle)
                if not host.get_addrs():  # libp2p logs a failed listen and goes on
                    with trio.move_on_after(CLOSE_TIMEOUT):
                        await host.close()
                    raise OSError("no listener started (address in use, or not this host's)")
                self._host = host
                self.addrs = advertised(host.get_addrs(), self.advertise_ip)
                task_status.started()
                await self._stopping.wait()
                self._host = None
                with trio.move_on_after(CLOSE_TIMEOUT):
                    await host.close()
        finally:
            self._host = None
            self._stopped.set()

    async def _shutdown(self) -> None:
        self._stopping.set()
        with trio.move_on_after(CLOSE_TIMEOUT + 1):
            await self._stopped.wait()

    def _new_host(self) -> IHost:
        noise = NoiseTransport(self.key, noise_privkey=new_x25519_pair().private_key)
        host = new_host(
            key_pair=self.key,
            sec_opt={NOISE_PROTOCOL_ID: noise},
            listen_addrs=[self.listen],
            connection_config=ConnectionConfig(min_connections=0, low_watermark=0),
        )
        _without_auto_dials(host)
        return host

    async def open_chunks(
        self, addr: str, request: ChunkRequest, connect_timeout: float, timeout: float
    ) -> tuple[INetStream, ChunkAnswer, bytes]:
        """A chunk stream to the peer at `addr`: the answer head and the bytes after it."""
        host = self._host
        if host is None:
            raise ConnectionError("the libp2p host is not running")
        info = info_from_p2p_addr(parse_multiaddr(addr))
        with trio.fail_after(connect_timeout):
            await host.connect(info)
        with trio.fail_after(timeout):
            stream = await host.new_stream(info.peer_id, [CHUNK_PROTOCOL])
            try:
                await stream.write(encode_head(request))
                decoder = HeadDecoder(ChunkAnswer)
                answer = await read_head(stream, decoder)
            except BaseException:
                await reset(stream)
                raise
        return stream, answer, decoder.rest

    async def read(self, stream: INetStream, timeout: float) -> bytes:
        """The next bytes of a chunk stream (b"" at its end)."""
        with trio.fail_after(timeout):
            return await read_piece(stream)

    async def release(self, stream: INetStream, whole: bool) -> None:
        """Close a stream read to its end; reset one given up on."""
        if whole:
            with trio.move_on_after(CLOSE_TIMEOUT):
                try:
                    await stream.close()
                except Exception:  # closing a stream the other side closed: nothing left
                    await reset(stream)
        else:
            await reset(stream)


class ChunkStreamHandler:
    """Serves one `/nydus-mesh/chunk/1` stream per call, as the HTTP chunk server does."""

    def __init__(self, service: ChunkService, bridge: TrioThread, metrics: Libp2pMetrics) -> None:
        self.cache = service.cache
        self.uploads = service.uploads
        self.bridge = bridge
        self.metrics = metrics

    async def handle(self, stream: INetStream) -> None:
        try:
            with trio.fail_after(REQUEST_TIMEOUT):
                request = await read_head(stream, HeadDecoder(ChunkRequest))
            await self._answer(stream, request)
        except Exception as exc:  # the client went away, sent garbage or was too slow
            log.info("chunk stream from %s failed: %s: %s", _remote(stream), type(exc).__name__,
                     exc)  # fmt: skip
            await reset(stream)
            return
        with trio.move_on_after(CLOSE_TIMEOUT):
            await stream.close()

    async def _answer(self, stream: INetStream, request: ChunkRequest) -> None:
        blob_id = request.blob_id
        try:
            start, end = parse_run(blob_id, str(request.start), str(request.end))
        except BadChunkRequest as exc:
            await stream.write(encode_head(ChunkAnswer(Status.BAD_REQUEST, str(exc))))
            return
        if not await self.bridge.to_asyncio(_take(self.uploads)):
            self.metrics.peer.uploads_refused.inc()
            detail = f"all {self.uploads.capacity} upload slots are busy"
            await stream.write(encode_head(ChunkAnswer(Status.BUSY, detail)))
            return
        try:
            await self._stream(stream, blob_id, start, end)
        finally:
            with trio.CancelScope(shield=True, deadline=trio.current_time() + CLOSE_TIMEOUT):
                await self.bridge.to_asyncio(_give_back(self.uploads))

    async def _stream(self, stream: INetStream, blob_id: str, start: int, end: int) -> None:
        """Frames of the present chunks; each is sent once the next is known (LAST on the end)."""
        records = await trio.to_thread.run_sync(self.cache.chunk_records, blob_id, start, end)
        held: Frame | None = None
        answered = False
        for group in _groups(records, READ_GROUP_BYTES):
            stored = await trio.to_thread.run_sync(self.cache.read_indexed, blob_id, group)
            for record, data in zip(group, stored, strict=True):
                if data is None:
                    continue
                if held is not None:
                    answered = answered or await self._ok(stream)
                    await self._send(stream, held)
                held = Frame(blob_id, record.index, data, _codec(record))
        if held is None:
            detail = f"holds none of chunks [{start}, {end}) of blob {blob_id}"
            await stream.write(encode_head(ChunkAnswer(Status.NOT_FOUND, detail)))
            return
        answered = answered or await self._ok(stream)
        last = Frame(held.blob_id, held.chunk_index, held.payload, held.codec, FrameFlags.LAST)
        await self._send(stream, last)

    async def _ok(self, stream: INetStream) -> bool:
        await stream.write(encode_head(ChunkAnswer(Status.OK)))
        return True

    async def _send(self, stream: INetStream, frame: Frame) -> None:
        data = encode_frame(frame)
        if self.uploads.limiter is not None:
            await self.bridge.to_asyncio(self.uploads.pace(len(data)))
        await stream.write(data)
        self.metrics.peer.peer_bytes_out.inc(len(frame.payload))
        self.metrics.peer.peer_chunks_out.inc()
        self.metrics.bytes_out.inc(len(frame.payload))


async def _take(uploads: UploadSlots) -> bool:
    return uploads.try_take()


async def _give_back(uploads: UploadSlots) -> None:
    uploads.give_back()


# --- helpers on trio streams -----------------------------------------------------------------


async def read_piece(stream: INetStream) -> bytes:
    try:
        return await stream.read(READ_PIECE)
    except StreamEOF:
        return b""


async def read_head(stream: INetStream, decoder: HeadDecoder[H]) -> H:
    """Read until the decoder has its head (what followed is in `decoder.rest`)."""
    while True:
        piece = await read_piece(stream)
        if not piece:
            raise ProtocolError("the stream ended before its head was whole")
        head = decoder.feed(piece)
        if head is not None:
            return head


async def reset(stream: INetStream) -> None:
    """Reset a stream given up on; shielded, so it happens even in a cancelled task."""
    with trio.CancelScope(shield=True, deadline=trio.current_time() + CLOSE_TIMEOUT):
        try:
            await stream.reset()
        except Exception as exc:  # already broken: nothing to tell the other side
            log.debug("resetting a stream failed: %s", exc)


def _without_auto_dials(host: IHost) -> None:
    """The supernode names the parents: libp2p's auto-connector must not dial peers on its
    own (it re-dials peers once met, and a dial cut short by shutdown leaks its socket)."""
    connector = getattr(host.get_network(), "auto_connector", None)
    if connector is not None:

        async def no_dials() -> None:
            return None

        connector.maybe_connect = no_dials


def _remote(stream: INetStream) -> str:
    try:
        return str(stream.muxed_conn.peer_id)
    except Exception:  # a stream without its connection: only for the log line
        return "?"


def parse_multiaddr(text: str) -> multiaddr.Multiaddr:
    try:
        return multiaddr.Multiaddr(text)
    except Exception as exc:  # multiaddr raises several unrelated types for bad text
        raise UsageError(f"{text!r} is not a multiaddr: {exc}") from exc


def advertised(addrs: Sequence[multiaddr.Multiaddr], ip: str | None) -> tuple[str, ...]:
    """The listen multiaddrs (with `/p2p/ID`), a wildcard IP replaced by `ip`."""
    found: list[str] = []
    for addr in addrs:
        text = str(addr)
        for wildcard in ("/ip4/0.0.0.0/", "/ip6/::/"):
            if ip and text.startswith(wildcard):
                version = "ip6" if ":" in ip else "ip4"
                text = f"/{version}/{ip}/{text[len(wildcard) :]}"
        found.append(text)
    return tuple(found)
