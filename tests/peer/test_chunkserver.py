"""The chunk server against a real cache on a loopback socket, fetched with the real HTTP
transport: what it serves, what it refuses, and how it paces uploads."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from peer import (
    HttpChunkTransport,
    ParentError,
    PeerMetrics,
    RateLimiter,
    UploadSlots,
    make_chunk_app,
)
from protocol import FailureKind, Frame, Parent
from rafs._cache import BlobCache
from rafs._chunksource import verify_chunk
from tests.cache.blobs import Blob, make_blob

pytestmark = pytest.mark.timeout(30)

BLOB = "c" * 64


@dataclass
class Server:
    url: str
    cache: BlobCache
    blob: Blob
    uploads: UploadSlots
    metrics: PeerMetrics
    transport: HttpChunkTransport

    @property
    def parent(self) -> Parent:
        return Parent(peer_id="server", http_url=self.url)

    async def frames(self, start: int, end: int, blob_id: str = BLOB) -> list[Frame]:
        stream = self.transport.fetch(self.parent, blob_id, start, end, 10.0)
        return [frame async for frame in stream]


async def _serve(tmp_path: Path, limiter: RateLimiter | None = None) -> AsyncIterator[Server]:
    blob = make_blob(BLOB, 12, min_size=8192, max_size=16384)
    cache = BlobCache(tmp_path / "cache")
    uploads, metrics = UploadSlots(4, limiter), PeerMetrics()
    runner = web.AppRunner(make_chunk_app(cache, metrics, uploads), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    transport = HttpChunkTransport()
    try:
        yield Server(f"http://127.0.0.1:{port}", cache, blob, uploads, metrics, transport)
    finally:
        await transport.close()
        await runner.cleanup()
        cache.close()


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[Server]:
    async for found in _serve(tmp_path):
        yield found


async def test_present_chunks_stream_in_order_with_the_last_frame_flagged(server: Server) -> None:
    blob = server.blob
    server.cache.put_many(blob.ref, [blob.fetched(i) for i in (2, 3, 5, 6)])
    frames = await server.frames(2, 7)
    assert [f.chunk_index for f in frames] == [2, 3, 5, 6]  # 4 is not held: left out
    assert [f.last for f in frames] == [False, False, False, True]
    for frame in frames:
        assert frame.payload == blob.stored[frame.chunk_index]
        verify_chunk(blob.ref, blob.chunks[frame.chunk_index], frame.payload)
    assert server.metrics.registry.get_sample_value("dfdaemon_peer_chunks_out_total") == 4


async def test_a_chunk_whose_bit_was_cleared_is_never_served(server: Server) -> None:
    blob = server.blob
    server.cache.put_many(blob.ref, [blob.fetched(i) for i in (0, 1)])
    server.cache.discard(BLOB, blob.chunks[1])
    assert [f.chunk_index for f in await server.frames(0, 2)] == [0]


async def test_nothing_held_is_not_found(server: Server) -> None:
    with pytest.raises(ParentError) as caught:
        await server.frames(0, 3)
    assert caught.value.kind is FailureKind.NOT_FOUND


@pytest.mark.parametrize(
    ("blob_id", "start", "end"),
    [(BLOB, 3, 3), (BLOB, 0, 2000), ("../etc/passwd".ljust(64, "a"), 0, 1)],
)
async def test_bad_requests_are_400(server: Server, blob_id: str, start: int, end: int) -> None:
    async with aiohttp.ClientSession() as http:
        url = f"{server.url}/api/v1/blobs/{blob_id}/chunks?start={start}&end={end}"
        async with http.get(url) as response:
            assert response.status in (400, 404)  # 404: the router refuses a path with "/"
            if response.status == 400:
                assert (await response.json())["error"] == "bad_request"


async def test_when_every_slot_is_busy_the_answer_is_503_with_retry_after(
    server: Server,
) -> None:
    server.cache.put(server.blob.ref, server.blob.fetched(0))
    server.uploads.in_flight = server.uploads.capacity
    async with aiohttp.ClientSession() as http:
        url = f"{server.url}/api/v1/blobs/{BLOB}/chunks?start=0&end=1"
        async with http.get(url) as response:
            assert response.status == 503
            assert response.headers["Retry-After"] == "1"
    with pytest.raises(ParentError) as caught:
        await server.frames(0, 1)
    assert caught.value.kind is FailureKind.BUSY
    server.uploads.in_flight = 0
    assert len(await server.frames(0, 1)) == 1


async def test_the_bitmap_lists_the_chunks_held(server: Server) -> None:
    server.cache.put_many(server.blob.ref, [server.blob.fetched(i) for i in (1, 9)])
    url = f"{server.url}/api/v1/blobs/{BLOB}/bitmap"
    async with aiohttp.ClientSession() as http, http.get(url) as response:
        bits = int.from_bytes(await response.read(), "little")
    assert bits == (1 << 1) | (1 << 9)


async def test_uploads_are_paced_by_the_rate_limit(tmp_path: Path) -> None:
    rate = 200_000.0
    async for server in _serve(tmp_path, RateLimiter(rate, burst=16384)):
        blob = server.blob
        server.cache.put_many(blob.ref, [blob.fetched(i) for i in range(12)])
        total = sum(len(s) for s in blob.stored)
        started = time.monotonic()
        frames = await server.frames(0, 12)
        elapsed = time.monotonic() - started
        assert len(frames) == 12
        assert elapsed >= (total - 16384 - 16384) / rate  # burst plus one frame of slack
