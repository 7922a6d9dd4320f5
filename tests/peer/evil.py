"""A malicious peer for the tests: registers with the supernode, announces every chunk of
an image's blobs, and serves each chunk with one byte flipped (same length, wrong digest).
"""

from __future__ import annotations

import aiohttp
from aiohttp import web

from peer import entries_from_bootstrap
from protocol import Codec, Frame, FrameFlags, encode_frame
from rafs import ChunkInfo
from rafs._load import load_bootstrap

from .cluster import TOKEN, Image, free_port


class EvilPeer:
    def __init__(self, image: Image) -> None:
        boot = load_bootstrap(image.bootstrap)
        self.entries = {e.blob_id: e for e in entries_from_bootstrap(boot, lambda _: None)}
        self.blobs = {b: (image.blob_dir / b).read_bytes() for b in self.entries}
        self.requests = 0
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/api/v1/blobs/{blob_id}/chunks", self._chunks)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def join(self, supernode_url: str, peer_id: str = "evil") -> None:
        """Register and announce every chunk of every blob."""
        headers = {"Authorization": f"Bearer {TOKEN}"}
        register = {"type": "register", "peer_id": peer_id, "host_name": "host-evil",
                    "ip": "127.0.0.1", "upload_port": self.port, "http_url": self.url,
                    "upload_capacity": 64}  # fmt: skip
        async with aiohttp.ClientSession(headers=headers) as http:
            await _post(http, supernode_url + "/api/v1/peers/register", register)
            for blob_id, entry in self.entries.items():
                announce = {"type": "announce", "peer_id": peer_id, "blob_id": blob_id,
                            "chunk_count": entry.chunk_count,
                            "ranges": [[0, entry.chunk_count]]}  # fmt: skip
                await _post(http, supernode_url + "/api/v1/announce", announce)

    async def _chunks(self, request: web.Request) -> web.StreamResponse:
        self.requests += 1
        blob_id = request.match_info["blob_id"]
        start, end = int(request.query["start"]), int(request.query["end"])
        chunks = [self.entries[blob_id].chunks[i] for i in range(start, end)]
        response = web.StreamResponse()
        await response.prepare(request)
        for n, info in enumerate(chunks):
            last = FrameFlags.LAST if n == len(chunks) - 1 else FrameFlags.NONE
            frame = Frame(blob_id, info.index, self._flipped(blob_id, info), Codec.NONE, last)
            await response.write(encode_frame(frame))
        await response.write_eof()
        return response

    def _flipped(self, blob_id: str, info: ChunkInfo) -> bytes:
        start = info.compressed_offset
        data = bytearray(self.blobs[blob_id][start : start + info.compressed_size])
        data[len(data) // 2] ^= 0x01
        return bytes(data)


async def _post(http: aiohttp.ClientSession, url: str, body: dict[str, object]) -> None:
    async with http.post(url, json=body) as response:
        assert response.status < 300, await response.text()
