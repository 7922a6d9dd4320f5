"""The chunk server's sendfile path against a real cache on loopback: the same bytes as the
read-and-write path, only verified chunks, and what a stalled or vanished client leaves
behind (nothing: its upload slot and its span locks come back).

The in-process servers run on the default asyncio loop; one test runs a real `dfdaemon`
process, which serves on uvloop (no `loop.sendfile` there)."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from peer import PeerMetrics, RateLimiter, UploadSlots, _chunksend, make_chunk_app
from peer._chunksend import frame_header
from peer._chunkserver import lease_run
from protocol import Codec, Frame, FrameFlags, encode_frame
from rafs._cache import BlobCache
from rafs._chunkmap import RECORD, ChunkRecord
from rafs._model import CHUNK_COMPRESSED
from tests.cache.blobs import Blob, make_blob
from tests.peer.cluster import free_port, stop_process

pytestmark = pytest.mark.timeout(60)

BLOB = "d" * 64
BIN = Path(sys.executable).parent


@dataclass
class Server:
    port: int
    cache: BlobCache
    blob: Blob
    uploads: UploadSlots

    async def get(self, start: int, end: int) -> tuple[int, dict[str, str], bytes]:
        return await get(self.port, start, end)


def path(start: int, end: int) -> str:
    return f"/api/v1/blobs/{BLOB}/chunks?start={start}&end={end}"


async def get(port: int, start: int, end: int) -> tuple[int, dict[str, str], bytes]:
    """Status, headers and the body as it arrived (chunked coding removed)."""
    url = f"http://127.0.0.1:{port}{path(start, end)}"
    async with aiohttp.ClientSession() as http, http.get(url) as response:
        return response.status, dict(response.headers), await response.read()


async def _serve(
    cache: BlobCache, blob: Blob, limiter: RateLimiter | None = None, slots: int = 4
) -> AsyncIterator[Server]:
    uploads = UploadSlots(slots, limiter)
    runner = web.AppRunner(make_chunk_app(cache, PeerMetrics(), uploads), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield Server(runner.addresses[0][1], cache, blob, uploads)
    finally:
        await runner.cleanup()


@pytest.fixture
def cache(tmp_path: Path) -> Iterator[BlobCache]:
    with BlobCache(tmp_path / "cache") as found:
        yield found


@pytest.fixture
async def server(cache: BlobCache) -> AsyncIterator[Server]:
    blob = make_blob(BLOB, 16, min_size=4096, max_size=65536)
    async for found in _serve(cache, blob):
        yield found


@pytest.fixture
async def big_server(cache: BlobCache) -> AsyncIterator[Server]:
    """40 chunks of 1 MiB (every fifth stored raw): ~8 MB, more than loopback buffers hold."""
    blob = make_blob(BLOB, 40, min_size=1 << 20, max_size=1 << 20)
    cache.put_many(blob.ref, [blob.fetched(i) for i in range(40)])
    async for found in _serve(cache, blob, slots=64):
        yield found


def expected_body(blob: Blob, indices: list[int]) -> bytes:
    """What `encode_frame` makes of the chunks, the last one flagged LAST."""
    frames = []
    for n, index in enumerate(indices):
        info = blob.chunks[index]
        codec = Codec.ZSTD if info.flags & CHUNK_COMPRESSED else Codec.NONE
        flags = FrameFlags.LAST if n == len(indices) - 1 else FrameFlags.NONE
        frames.append(encode_frame(Frame(BLOB, index, blob.stored[index], codec, flags)))
    return b"".join(frames)


async def wait_until(what: str, check: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


@dataclass
class StalledClient:
    """A GET whose response head was read, after which the client stopped reading."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    head: bytes

    def reset(self) -> None:
        self.writer.transport.abort()  # RST, as a crashed or killed client


async def stalled_request(port: int, start: int, end: int) -> StalledClient:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    reader, writer = await asyncio.open_connection(sock=sock, limit=16384)
    writer.write(f"GET {path(start, end)} HTTP/1.1\r\nHost: peer\r\n\r\n".encode())
    return StalledClient(reader, writer, await reader.readuntil(b"\r\n\r\n"))


# --- unit: the header written apart from its payload ------------------------------------


@pytest.mark.parametrize(
    ("index", "size", "codec", "flags"),
    [
        (0, 0, Codec.NONE, FrameFlags.NONE),
        (7, 1 << 20, Codec.ZSTD, FrameFlags.LAST),
        ((1 << 32) - 1, 3, Codec.GZIP, FrameFlags.NONE),
    ],
)
def test_a_frame_header_is_what_encode_frame_puts_before_the_payload(
    index: int, size: int, codec: Codec, flags: FrameFlags
) -> None:
    record = ChunkRecord(index, 123, size, size, 0, 0, bytes(32))
    payload = bytes(size)
    encoded = encode_frame(Frame(BLOB, index, payload, codec, flags))
    assert frame_header(BLOB, record, codec, flags) + payload == encoded


# --- the same bytes as the read path ------------------------------------------------------


@pytest.mark.parametrize("held", [[0], [3], list(range(16)), [1, 2, 5, 9, 15]])
async def test_sendfile_serves_the_bytes_the_read_path_serves(
    cache: BlobCache, server: Server, held: list[int]
) -> None:
    blob = server.blob
    cache.put_many(blob.ref, [blob.fetched(i) for i in held])
    async for paced in _serve(cache, blob, RateLimiter(1e12)):  # a limiter: the read path
        for start, end in [(0, 16), (held[0], held[0] + 1), (held[-1], 16)]:
            status, headers, body = await server.get(start, end)
            _, paced_headers, paced_body = await paced.get(start, end)
            assert status == 200
            assert body == paced_body == expected_body(blob, [i for i in held if start <= i < end])
            assert int(headers["Content-Length"]) == len(body)
            assert "Transfer-Encoding" not in headers
            assert paced_headers["Transfer-Encoding"] == "chunked"


async def test_a_run_of_megabyte_chunks_arrives_whole_and_in_order(big_server: Server) -> None:
    status, headers, body = await big_server.get(0, 40)
    assert status == 200
    assert body == expected_body(big_server.blob, list(range(40)))
    assert int(headers["Content-Length"]) == len(body)
    assert big_server.uploads.in_flight == 0


async def test_a_head_request_gets_the_length_and_no_body(server: Server) -> None:
    blob = server.blob
    server.cache.put_many(blob.ref, [blob.fetched(i) for i in range(3)])
    url = f"http://127.0.0.1:{server.port}{path(0, 3)}"
    async with aiohttp.ClientSession() as http:  # one connection, kept alive
        async with http.head(url) as response:
            assert response.status == 200
            assert int(response.headers["Content-Length"]) == len(expected_body(blob, [0, 1, 2]))
        async with http.get(url) as response:  # a body after the head would garble this one
            assert await response.read() == expected_body(blob, [0, 1, 2])


async def test_many_requests_at_once_each_get_their_own_chunks(big_server: Server) -> None:
    got = await asyncio.gather(*(big_server.get(i, i + 1) for i in range(40)))
    for index, (status, _, body) in enumerate(got):
        assert status == 200
        assert body == expected_body(big_server.blob, [index])


# --- only verified chunks ------------------------------------------------------------------


async def test_a_chunk_whose_bit_was_cleared_is_left_out(server: Server) -> None:
    blob = server.blob
    server.cache.put_many(blob.ref, [blob.fetched(i) for i in range(4)])
    server.cache.discard(BLOB, blob.chunks[2])
    status, _, body = await server.get(0, 4)
    assert status == 200
    assert body == expected_body(blob, [0, 1, 3])


async def test_a_chunk_with_a_record_and_bytes_but_no_bit_is_never_served(
    server: Server,
) -> None:
    """As after a crash between writing a chunk's record and setting its bit."""
    blob, cache = server.blob, server.cache
    cache.put(blob.ref, blob.fetched(0))
    info = blob.chunks[1]
    with open(cache.data_path(BLOB), "r+b") as data:
        os.pwrite(data.fileno(), blob.stored[1], info.compressed_offset)
    record = ChunkRecord(1, info.compressed_offset, info.compressed_size,
                         info.uncompressed_size, info.flags, 1, info.digest)  # fmt: skip
    with open(cache.index_path(BLOB), "r+b") as index:
        os.pwrite(index.fileno(), record.encode(), RECORD.size)
    assert cache.chunk_records(BLOB, 1, 2) == [record]  # the record is there
    assert (await server.get(1, 2))[0] == 404
    assert (await server.get(0, 2))[2] == expected_body(blob, [0])


def test_a_lease_leaves_out_a_chunk_discarded_after_its_record_was_read(
    cache: BlobCache,
) -> None:
    blob = make_blob(BLOB, 3)
    cache.put_many(blob.ref, [blob.fetched(i) for i in range(3)])
    records = cache.chunk_records(BLOB, 0, 3)
    cache.discard(BLOB, blob.chunks[1])
    with cache.lease_indexed(BLOB, records) as lease:
        assert [r.index for r in lease.records] == [0, 2]


async def test_while_a_lease_is_open_no_writer_can_clear_its_chunks(cache: BlobCache) -> None:
    blob = make_blob(BLOB, 3)
    cache.put_many(blob.ref, [blob.fetched(i) for i in range(3)])
    lease = lease_run(cache, BLOB, 0, 3)
    try:
        clearing = asyncio.ensure_future(asyncio.to_thread(cache.discard, BLOB, blob.chunks[2]))
        await asyncio.sleep(0.3)
        assert not clearing.done()  # waits for the lease's shared lock on the span
    finally:
        lease.close()
    await asyncio.wait_for(clearing, 10)
    assert not cache.has(BLOB, 2)


# --- pacing --------------------------------------------------------------------------------


async def test_a_rate_limited_server_paces_and_serves_the_same_frames(cache: BlobCache) -> None:
    blob = make_blob(BLOB, 8, min_size=16384, max_size=16384)
    cache.put_many(blob.ref, [blob.fetched(i) for i in range(8)])
    rate = 100_000.0
    async for paced in _serve(cache, blob, RateLimiter(rate, burst=8192)):
        started = time.monotonic()
        status, _, body = await paced.get(0, 8)
        elapsed = time.monotonic() - started
    assert status == 200
    assert body == expected_body(blob, list(range(8)))
    assert elapsed >= (len(body) - 2 * 16384) / rate  # the burst plus one frame of slack


# --- clients that stall or vanish ----------------------------------------------------------


async def test_a_client_gone_mid_stream_gives_back_its_slot_and_its_locks(
    big_server: Server,
) -> None:
    cache, blob = big_server.cache, big_server.blob
    client = await stalled_request(big_server.port, 0, 40)
    try:
        assert b"200 OK" in client.head and b"Content-Length" in client.head
        await asyncio.sleep(0.3)
        assert big_server.uploads.in_flight == 1  # stuck on the full socket
        clearing = asyncio.ensure_future(asyncio.to_thread(cache.discard, BLOB, blob.chunks[39]))
        await asyncio.sleep(0.3)
        assert not clearing.done()  # the last chunk is still held for sending
    finally:
        client.reset()
    await asyncio.wait_for(clearing, 10)
    await wait_until("the upload slot to come back", lambda: big_server.uploads.in_flight == 0)
    assert (await big_server.get(0, 1))[2] == expected_body(blob, [0])  # still serving


async def test_a_client_that_stops_reading_is_cut_off_after_the_send_timeout(
    big_server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_chunksend, "SEND_TIMEOUT_SECONDS", 0.5)
    client = await stalled_request(big_server.port, 0, 40)
    try:
        await wait_until("the stalled upload to be cut", lambda: not big_server.uploads.in_flight)
        received = b""
        with pytest.raises((ConnectionError, asyncio.IncompleteReadError)):
            while True:
                received += await client.reader.readexactly(65536)
        assert len(received) < len(expected_body(big_server.blob, list(range(40))))
    finally:
        client.reset()


# --- a real dfdaemon (uvloop) ------------------------------------------------------------


@pytest.fixture
def daemon(tmp_path: Path, cache: BlobCache) -> Iterator[tuple[int, Blob]]:
    """A dfdaemon with one upload slot serving the cache (its supernode answers nothing)."""
    blob = make_blob(BLOB, 40, min_size=1 << 20, max_size=1 << 20)
    cache.put_many(blob.ref, [blob.fetched(i) for i in range(40)])
    port, dead = free_port(), free_port()
    argv = [str(BIN / "dfdaemon"), "--supernode", f"http://127.0.0.1:{dead}", "--listen",
            f"127.0.0.1:{port}", "--data-dir", str(tmp_path / "daemon"), "--cache-dir",
            str(cache.cache_dir), "--upload-slots", "1", "--log-level", "warning"]  # fmt: skip
    with open(tmp_path / "dfdaemon.log", "ab") as log:
        process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
    try:
        _wait_healthy(port, process)
        yield port, blob
    finally:
        stop_process(process)


def _wait_healthy(port: int, process: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, f"dfdaemon exited {process.returncode}"
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise AssertionError(f"dfdaemon did not listen on {port} in {timeout}s")


async def test_a_real_daemon_sends_whole_runs_and_frees_a_slot_its_client_dropped(
    daemon: tuple[int, Blob],
) -> None:
    port, blob = daemon
    status, headers, body = await get(port, 0, 40)
    assert status == 200 and body == expected_body(blob, list(range(40)))
    assert int(headers["Content-Length"]) == len(body)
    client = await stalled_request(port, 0, 40)
    try:
        assert (await get(port, 0, 1))[0] == 503  # its only slot is taken by the stalled client
    finally:
        client.reset()
    deadline = time.monotonic() + 10
    while (await get(port, 5, 6))[2] != expected_body(blob, [5]):
        assert time.monotonic() < deadline, "the dropped client's slot never came back"
        await asyncio.sleep(0.05)
