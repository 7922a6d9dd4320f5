"""The piece trust model against a lying parent (in this process) that announces a file's
piece table and pieces: a piece with a wrong sha256 is caught and fetched from the origin;
a table consistent with forged pieces is caught by the whole-file digest (exit 4, no file).
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from peer._pieces import PIECE_SIZE, PieceTable, file_blob_id, piece_spans, table_blob_id
from protocol import Codec, Frame, FrameFlags, encode_frame

from .cluster import TOKEN, Cluster, free_port
from .test_dfget import FileServer, daemon, dfget, sha256


class LyingParent:
    """Registers, announces a file's table blob and pieces, serves `table` and `pieces`."""

    def __init__(self, blob_id: str, table: PieceTable, pieces: list[bytes]) -> None:
        self.blob_id, self.table, self.pieces = blob_id, table, pieces
        self.table_id = table_blob_id(blob_id)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.piece_requests = 0
        self._runner: web.AppRunner | None = None

    async def start(self, supernode_url: str) -> None:
        app = web.Application()
        app.router.add_get("/api/v1/blobs/{blob_id}/chunks", self._chunks)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        register = {"type": "register", "peer_id": "liar", "host_name": "host-liar",
                    "ip": "127.0.0.1", "upload_port": self.port, "http_url": self.url,
                    "upload_capacity": 64}  # fmt: skip
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {TOKEN}"}) as http:
            await _post(http, supernode_url + "/api/v1/peers/register", register)
            for blob_id, count in ((self.table_id, 1), (self.blob_id, len(self.pieces))):
                announce = {"type": "announce", "peer_id": "liar", "blob_id": blob_id,
                            "chunk_count": count, "ranges": [[0, count]]}  # fmt: skip
                await _post(http, supernode_url + "/api/v1/announce", announce)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _chunks(self, request: web.Request) -> web.StreamResponse:
        blob_id = request.match_info["blob_id"]
        start, end = int(request.query["start"]), int(request.query["end"])
        if blob_id == self.table_id:
            payloads = [self.table.encode()]
        else:
            self.piece_requests += 1
            payloads = self.pieces[start:end]
        response = web.StreamResponse()
        await response.prepare(request)
        for n, payload in enumerate(payloads):
            last = FrameFlags.LAST if n == len(payloads) - 1 else FrameFlags.NONE
            frame = Frame(blob_id, start + n, payload, Codec.NONE, last)
            await response.write(encode_frame(frame))
        await response.write_eof()
        return response


async def _post(http: aiohttp.ClientSession, url: str, body: dict[str, object]) -> None:
    async with http.post(url, json=body) as response:
        assert response.status < 300, await response.text()


@pytest.fixture
def world(tmp_path: Path) -> Iterator[tuple[Cluster, FileServer, bytes]]:
    root = tmp_path / "files"
    root.mkdir()
    data = hashlib.sha256(b"seed").digest() * ((PIECE_SIZE + 500_000) // 32)  # 2 pieces
    (root / "f.bin").write_bytes(data)
    files = FileServer(root)
    files.start()
    found = Cluster(tmp_path / "cluster")
    found.base.mkdir()
    try:
        found.start_supernode()
        yield found, files, data
    finally:
        found.close()
        files.stop()


def split(data: bytes) -> list[bytes]:
    return [data[off : off + n] for off, n in piece_spans(len(data))]


def forge(data: bytes) -> bytes:
    forged = bytearray(data)
    forged[PIECE_SIZE + 10] ^= 0x01  # in the second piece
    return bytes(forged)


def table_of(pieces: list[bytes], content_digest: str) -> PieceTable:
    digests = tuple(hashlib.sha256(p).digest() for p in pieces)
    return PieceTable(sum(map(len, pieces)), PIECE_SIZE, digests, content_digest)


async def test_a_wrong_piece_is_caught_and_fetched_from_the_origin(
    world: tuple[Cluster, FileServer, bytes], tmp_path: Path
) -> None:
    mesh, files, data = world
    url = f"{files.url}/f.bin"
    honest_table = table_of(split(data), sha256(data))
    liar = LyingParent(file_blob_id(url, None), honest_table, split(forge(data)))
    assert mesh.supernode is not None
    await liar.start(mesh.supernode.url)
    try:
        b = await asyncio.to_thread(mesh.start_peer, "b")
        done = await asyncio.to_thread(dfget, url, "-O", str(tmp_path / "out"), "--daemon",
                                       daemon(b))  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert (tmp_path / "out").read_bytes() == data
        assert liar.piece_requests >= 1
        assert b.metric("dfdaemon_digest_mismatches_total") >= 1
        assert b.metric("dfdaemon_origin_bytes_total") >= len(split(data)[1])
    finally:
        await liar.stop()


async def test_a_forged_table_fails_the_whole_file_check(
    world: tuple[Cluster, FileServer, bytes], tmp_path: Path
) -> None:
    mesh, files, data = world
    url, digest = f"{files.url}/f.bin", sha256(data)
    forged = split(forge(data))  # pieces that match the forged table, not the digest
    liar = LyingParent(file_blob_id(url, digest), table_of(forged, digest), forged)
    assert mesh.supernode is not None
    await liar.start(mesh.supernode.url)
    try:
        b = await asyncio.to_thread(mesh.start_peer, "b")
        out = tmp_path / "out"
        done = await asyncio.to_thread(dfget, url, "-O", str(out), "--daemon", daemon(b),
                                       "--digest", digest)  # fmt: skip
        assert done.returncode == 4, done.stderr
        assert not list(tmp_path.glob("out*"))
        assert b.metric("dfdaemon_download_mesh_tables_total") == 1
    finally:
        await liar.stop()
