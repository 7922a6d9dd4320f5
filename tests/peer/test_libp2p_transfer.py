"""Chunks between two in-process libp2p hosts on loopback (noise, yamux, each in its own
trio thread), fetched with the real `Libp2pTransport`: every chunk verified, the same
answers as the HTTP server (not found, busy, bad request), the peer id kept across a
restart, and a `MeshSource` whose parent is reached over libp2p only."""

from __future__ import annotations

import asyncio
import os
import stat
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from peer import ParentError, PeerMetrics, UploadSlots
from peer._libp2p_host import ChunkService, Libp2pHost
from peer._libp2p_key import KEY_FILE, load_or_create_key
from peer._libp2p_transport import Libp2pTransport, PreferredTransport
from peer._libp2p_wire import ChunkRequest, HeadDecoder, Status, encode_head
from protocol import Codec, FailureKind, Frame, FrameDecoder, FrameFlags, Parent
from rafs._cache import BlobCache
from rafs._chunksource import verify_chunk
from tests.cache.blobs import Blob, make_blob

pytestmark = pytest.mark.timeout(45)

BLOB = "d" * 64
LOOPBACK = "/ip4/127.0.0.1/tcp/0"


@dataclass
class Pair:
    """A serving host over a real cache, and a client host with its transport."""

    server: Libp2pHost
    client: Libp2pHost
    cache: BlobCache
    blob: Blob
    uploads: UploadSlots
    metrics: PeerMetrics
    transport: Libp2pTransport

    @property
    def parent(self) -> Parent:
        return Parent(peer_id="server", multiaddrs=self.server.addrs)

    async def frames(self, start: int, end: int, blob_id: str = BLOB) -> list[Frame]:
        stream = self.transport.fetch(self.parent, blob_id, start, end, 10.0)
        return [frame async for frame in stream]


async def start_host(host: Libp2pHost) -> Libp2pHost:
    await asyncio.to_thread(host.start, asyncio.get_running_loop(), 10.0)
    return host


@pytest.fixture
async def pair(tmp_path: Path) -> AsyncIterator[Pair]:
    blob = make_blob(BLOB, 40, min_size=8192, max_size=65536)
    cache, metrics = BlobCache(tmp_path / "cache"), PeerMetrics()
    uploads = UploadSlots(4)
    service = ChunkService(cache, uploads)
    server = Libp2pHost(load_or_create_key(tmp_path / "a"), LOOPBACK, metrics, service=service)
    client = Libp2pHost(load_or_create_key(tmp_path / "b"), LOOPBACK, PeerMetrics())
    try:
        await start_host(server)
        await start_host(client)
        yield Pair(server, client, cache, blob, uploads, metrics, Libp2pTransport(client))
    finally:
        await client.aclose()
        await server.aclose()
        cache.close()
    assert not server.bridge.running and not client.bridge.running


async def test_every_chunk_held_arrives_verified_in_order(pair: Pair) -> None:
    blob = pair.blob
    held = [i for i in range(40) if i % 7 != 3]
    pair.cache.put_many(blob.ref, [blob.fetched(i) for i in held])
    frames = await pair.frames(0, 40)
    assert [f.chunk_index for f in frames] == held
    assert [f.last for f in frames] == [False] * (len(held) - 1) + [True]
    for frame in frames:
        assert frame.blob_id == BLOB
        assert frame.payload == blob.stored[frame.chunk_index]
        verify_chunk(blob.ref, blob.chunks[frame.chunk_index], frame.payload)
    sent = sum(len(blob.stored[i]) for i in held)
    # the server counts and frees its upload slot just after its last write, which may be
    # a moment after the client has read the last frame
    sample = pair.metrics.registry.get_sample_value
    for _ in range(100):
        if pair.uploads.in_flight == 0 and sample("dfdaemon_peer_chunks_out_total") == len(held):
            break
        await asyncio.sleep(0.02)
    assert sample("dfdaemon_libp2p_bytes_out_total") == sent
    assert sample("dfdaemon_peer_chunks_out_total") == len(held)
    assert pair.uploads.in_flight == 0


async def test_requests_run_side_by_side_on_one_connection(pair: Pair) -> None:
    blob = pair.blob
    pair.cache.put_many(blob.ref, [blob.fetched(i) for i in range(40)])
    runs = [(0, 10), (10, 20), (20, 30), (30, 40)]
    got = await asyncio.gather(*(pair.frames(start, end) for start, end in runs))
    for (start, end), frames in zip(runs, got, strict=True):
        assert [f.chunk_index for f in frames] == list(range(start, end))


async def test_nothing_held_is_not_found(pair: Pair) -> None:
    with pytest.raises(ParentError) as caught:
        await pair.frames(0, 3)
    assert caught.value.kind is FailureKind.NOT_FOUND


async def test_every_slot_busy_is_busy_and_the_slots_are_shared(pair: Pair) -> None:
    pair.cache.put(pair.blob.ref, pair.blob.fetched(0))
    pair.uploads.in_flight = pair.uploads.capacity  # as if HTTP uploads held them all
    with pytest.raises(ParentError) as caught:
        await pair.frames(0, 1)
    assert caught.value.kind is FailureKind.BUSY
    pair.uploads.in_flight = 0
    assert len(await pair.frames(0, 1)) == 1


@pytest.mark.parametrize(
    ("blob_id", "start", "end"),
    [(BLOB, 3, 3), (BLOB, 0, 2000), ("../etc/passwd", 0, 1), (BLOB, -1, 2)],
)
async def test_bad_requests_are_refused_as_protocol_failures(
    pair: Pair, blob_id: str, start: int, end: int
) -> None:
    with pytest.raises(ParentError) as caught:
        await pair.frames(start, end, blob_id)
    assert caught.value.kind is FailureKind.PROTOCOL
    assert "bad_request" in str(caught.value)


async def test_a_parent_not_listening_is_a_connect_failure(pair: Pair, tmp_path: Path) -> None:
    gone = Libp2pHost(load_or_create_key(tmp_path / "gone"), LOOPBACK, PeerMetrics())
    await start_host(gone)
    await gone.aclose()
    parent = Parent(peer_id="gone", multiaddrs=gone.addrs)
    with pytest.raises(ParentError) as caught:
        _ = [f async for f in pair.transport.fetch(parent, BLOB, 0, 1, 5.0)]
    assert caught.value.kind is FailureKind.CONNECT


async def test_a_parent_with_another_peer_id_is_refused(pair: Pair, tmp_path: Path) -> None:
    pair.cache.put(pair.blob.ref, pair.blob.fetched(0))
    other = Libp2pHost(load_or_create_key(tmp_path / "other"), LOOPBACK, PeerMetrics())
    address = pair.server.addrs[0].rsplit("/p2p/", 1)[0] + "/p2p/" + other.peer_id
    parent = Parent(peer_id="impostor", multiaddrs=(address,))
    with pytest.raises(ParentError) as caught:  # noise checks the key behind the address
        _ = [f async for f in pair.transport.fetch(parent, BLOB, 0, 1, 5.0)]
    assert caught.value.kind in (FailureKind.CONNECT, FailureKind.TIMEOUT)


async def test_a_silent_server_times_out_and_the_stream_is_released(
    pair: Pair, tmp_path: Path
) -> None:
    silent = Libp2pHost(load_or_create_key(tmp_path / "silent"), LOOPBACK, PeerMetrics())
    await start_host(silent)

    async def never_answers(stream: object) -> None:
        import trio

        await trio.sleep(30)

    async def install() -> None:
        from peer._libp2p_host import CHUNK_PROTOCOL

        assert silent._host is not None
        silent._host.set_stream_handler(CHUNK_PROTOCOL, never_answers)

    try:
        await silent.bridge.call(install)
        parent = Parent(peer_id="silent", multiaddrs=silent.addrs)
        pair.transport.idle_timeout = 0.5
        with pytest.raises(ParentError) as caught:
            _ = [f async for f in pair.transport.fetch(parent, BLOB, 0, 1, 5.0)]
        assert caught.value.kind is FailureKind.TIMEOUT
    finally:
        await silent.aclose()


async def test_the_transport_choice_follows_the_preference_and_the_offer(pair: Pair) -> None:
    http = object()  # never asked to fetch here
    both = Parent(peer_id="p", http_url="http://127.0.0.1:1", multiaddrs=pair.server.addrs)
    only_http = Parent(peer_id="p", http_url="http://127.0.0.1:1")
    only_p2p = Parent(peer_id="p", multiaddrs=pair.server.addrs)
    prefer_p2p = PreferredTransport(http, pair.transport, "libp2p")  # type: ignore[arg-type]
    prefer_http = PreferredTransport(http, pair.transport, "http")  # type: ignore[arg-type]
    assert prefer_p2p.choose(both) is pair.transport
    assert prefer_p2p.choose(only_http) is http
    assert prefer_http.choose(both) is http
    assert prefer_http.choose(only_p2p) is pair.transport


class OneFrameHttp:
    """An HTTP transport stand-in that answers every fetch with one frame."""

    def __init__(self) -> None:
        self.asked: list[str] = []

    async def fetch(
        self, parent: Parent, blob_id: str, start: int, end: int, timeout: float
    ) -> AsyncIterator[Frame]:
        self.asked.append(parent.peer_id)
        yield Frame(blob_id, start, b"payload", Codec.NONE, FrameFlags.LAST)

    async def close(self) -> None:
        pass


async def test_a_parent_unreachable_over_libp2p_is_tried_over_http(
    pair: Pair, tmp_path: Path
) -> None:
    gone = Libp2pHost(load_or_create_key(tmp_path / "gone"), LOOPBACK, PeerMetrics())
    await start_host(gone)
    await gone.aclose()
    http = OneFrameHttp()
    both = Parent(peer_id="both", http_url="http://127.0.0.1:1", multiaddrs=gone.addrs)
    only_p2p = Parent(peer_id="p2p", multiaddrs=gone.addrs)
    chooser = PreferredTransport(http, pair.transport, "libp2p")  # type: ignore[arg-type]
    frames = [f async for f in chooser.fetch(both, BLOB, 3, 4, 5.0)]
    assert [(f.chunk_index, f.payload) for f in frames] == [(3, b"payload")]
    with pytest.raises(ParentError) as caught:  # no other transport to try
        _ = [f async for f in chooser.fetch(only_p2p, BLOB, 3, 4, 5.0)]
    assert caught.value.kind is FailureKind.CONNECT
    assert http.asked == ["both"]


async def test_the_raw_stream_is_an_answer_head_then_chunk_frames(pair: Pair) -> None:
    pair.cache.put(pair.blob.ref, pair.blob.fetched(5))
    request = ChunkRequest(BLOB, 5, 6)
    assert HeadDecoder(ChunkRequest).feed(encode_head(request)) == request
    call, client = pair.client.bridge.call, pair.client
    stream, answer, rest = await call(client.open_chunks, pair.server.addrs[0], request, 2.0, 5.0)
    assert answer.status is Status.OK
    data = rest
    while piece := await call(client.read, stream, 5.0):
        data += piece  # the server closes the stream after the LAST frame
    await call(client.release, stream, True)
    (frame,) = FrameDecoder().feed(data)
    assert (frame.chunk_index, frame.last, frame.payload) == (5, True, pair.blob.stored[5])


# --- the key ---------------------------------------------------------------------------------


async def test_the_peer_id_survives_a_restart(tmp_path: Path) -> None:
    first = Libp2pHost(load_or_create_key(tmp_path), LOOPBACK, PeerMetrics())
    await start_host(first)
    await first.aclose()
    key_file = tmp_path / KEY_FILE
    assert stat.S_IMODE(os.stat(key_file).st_mode) == 0o600
    again = Libp2pHost(load_or_create_key(tmp_path), LOOPBACK, PeerMetrics())
    await start_host(again)
    try:
        assert again.peer_id == first.peer_id
        assert again.addrs[0].endswith(f"/p2p/{first.peer_id}")
    finally:
        await again.aclose()
    other = Libp2pHost(load_or_create_key(tmp_path / "elsewhere"), LOOPBACK, PeerMetrics())
    assert other.peer_id != first.peer_id
