"""The chunk server: verified chunks of the host's cache, by blob id and chunk index.

Rule: a chunk leaves this server only if its bit is set in the cache's chunk map (it was
verified when stored) and its index record still reads the same under the chunk's lock
(`BlobCache.read_indexed`, or `lease_indexed` which keeps those locks while the chunk is
sent); nothing is served by path. Uploads are bounded twice: at most `capacity` requests at
once (more get 503 with Retry-After) and, optionally, a token bucket on the bytes of every
upload together. The wire format is in `_wire`.

Two ways out, the same bytes on the wire. Unpaced, a request's chunks are leased up front
(one worker-thread call), the Content-Length is known, and payloads go by `sendfile`
(`_chunksend`). Paced by the rate limit, frames are read a group at a time and written
through aiohttp (chunked), so no lock is held while the limiter makes a request wait.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence

from aiohttp import web

from protocol import Codec, Frame, FrameFlags, encode_frame
from rafs._cache import BlobCache, ChunkLease
from rafs._chunkmap import ChunkRecord
from rafs._model import CHUNK_COMPRESSED

from ._chunksend import frame_header, send_leased
from ._metrics import PeerMetrics
from ._ratelimit import RateLimiter
from ._wire import (
    BITMAP_PATH,
    CHUNKS_MEDIA_TYPE,
    CHUNKS_PATH,
    BadChunkRequest,
    parse_run,
)

log = logging.getLogger("dfdaemon.upload")

READ_GROUP_BYTES = 4 << 20  # chunks read from the cache per worker-thread call
RETRY_AFTER_SECONDS = 1


class UploadSlots:
    """How many chunk requests may be served at once, and the shared byte-rate limit."""

    def __init__(self, capacity: int, limiter: RateLimiter | None = None) -> None:
        self.capacity = capacity
        self.limiter = limiter
        self.in_flight = 0

    def try_take(self) -> bool:
        if self.in_flight >= self.capacity:
            return False
        self.in_flight += 1
        return True

    def give_back(self) -> None:
        self.in_flight -= 1

    async def pace(self, size: int) -> None:
        if self.limiter is not None:
            await self.limiter.acquire(size)


CACHE = web.AppKey("cache", BlobCache)
METRICS = web.AppKey("metrics", PeerMetrics)
UPLOADS = web.AppKey("uploads", UploadSlots)


def error(status: int, code: str, detail: str) -> web.Response:
    return web.json_response({"error": code, "detail": detail}, status=status)


def add_chunk_routes(app: web.Application) -> None:
    """The chunk, bitmap, metrics and health routes (the app holds CACHE, METRICS, UPLOADS)."""
    app.router.add_get(CHUNKS_PATH, serve_chunks)
    app.router.add_get(BITMAP_PATH, serve_bitmap)
    app.router.add_get("/metrics", serve_metrics)
    app.router.add_get("/healthz", healthz)


def make_chunk_app(cache: BlobCache, metrics: PeerMetrics, uploads: UploadSlots) -> web.Application:
    """A chunk server alone (the daemon builds its app the same way, with more around it)."""
    app = web.Application()
    app[CACHE], app[METRICS], app[UPLOADS] = cache, metrics, uploads
    add_chunk_routes(app)
    return app


async def serve_chunks(request: web.Request) -> web.StreamResponse:
    blob_id = request.match_info["blob_id"]
    try:
        start, end = parse_run(blob_id, request.query.get("start"), request.query.get("end"))
    except BadChunkRequest as exc:
        return error(400, "bad_request", str(exc))
    uploads = request.app[UPLOADS]
    if not uploads.try_take():
        request.app[METRICS].uploads_refused.inc()
        response = error(503, "busy", f"all {uploads.capacity} upload slots are busy")
        response.headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
        return response
    try:
        return await _stream(request, blob_id, start, end)
    finally:
        uploads.give_back()


async def _stream(request: web.Request, blob_id: str, start: int, end: int) -> web.StreamResponse:
    if request.app[UPLOADS].limiter is None:
        return await _send_leased(request, blob_id, start, end)
    return await _send_read(request, blob_id, start, end)


async def _send_leased(
    request: web.Request, blob_id: str, start: int, end: int
) -> web.StreamResponse:
    """The verified chunks, leased until sent, payloads by sendfile."""
    with await _lease(request.app[CACHE], blob_id, start, end) as lease:
        if not lease.records:
            return _none_held(blob_id, start, end)
        headers = _frame_headers(blob_id, lease.records)
        return await send_leased(request, lease, headers, request.app[METRICS])


async def _lease(cache: BlobCache, blob_id: str, start: int, end: int) -> ChunkLease:
    """`lease_run` in a worker thread; a lease that arrives after we were cancelled is
    closed, never left holding its locks."""
    leasing = asyncio.ensure_future(asyncio.to_thread(lease_run, cache, blob_id, start, end))
    try:
        return await asyncio.shield(leasing)
    except asyncio.CancelledError:
        leasing.add_done_callback(_close_unwanted)
        raise


def lease_run(cache: BlobCache, blob_id: str, start: int, end: int) -> ChunkLease:
    """The verified chunks of `[start, end)`, held (runs in a worker thread)."""
    return cache.lease_indexed(blob_id, cache.chunk_records(blob_id, start, end))


def _close_unwanted(leasing: asyncio.Future[ChunkLease]) -> None:
    if not leasing.cancelled() and leasing.exception() is None:
        leasing.result().close()


def _frame_headers(blob_id: str, records: Sequence[ChunkRecord]) -> list[bytes]:
    last = len(records) - 1
    return [
        frame_header(blob_id, r, _codec(r), FrameFlags.LAST if n == last else FrameFlags.NONE)
        for n, r in enumerate(records)
    ]


def _none_held(blob_id: str, start: int, end: int) -> web.Response:
    return error(404, "not_found", f"holds none of chunks [{start}, {end}) of blob {blob_id}")


async def _send_read(
    request: web.Request, blob_id: str, start: int, end: int
) -> web.StreamResponse:
    """Frames of the present chunks, read and paced; each is sent once the next is known
    (LAST on the end)."""
    cache = request.app[CACHE]
    records = await asyncio.to_thread(cache.chunk_records, blob_id, start, end)
    response: web.StreamResponse | None = None
    held: Frame | None = None
    async for frame in _present_frames(cache, blob_id, records):
        if held is not None:
            response = response or await _prepare(request)
            await _send(request, response, held)
        held = frame
    if held is None:
        return _none_held(blob_id, start, end)
    response = response or await _prepare(request)
    last = Frame(held.blob_id, held.chunk_index, held.payload, held.codec, FrameFlags.LAST)
    await _send(request, response, last)
    await response.write_eof()
    return response


async def _prepare(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": CHUNKS_MEDIA_TYPE})
    await response.prepare(request)
    return response


async def _send(request: web.Request, response: web.StreamResponse, frame: Frame) -> None:
    data = encode_frame(frame)
    await request.app[UPLOADS].pace(len(data))
    await response.write(data)
    metrics = request.app[METRICS]
    metrics.peer_bytes_out.inc(len(frame.payload))
    metrics.peer_chunks_out.inc()


async def _present_frames(
    cache: BlobCache, blob_id: str, records: Sequence[ChunkRecord]
) -> AsyncIterator[Frame]:
    """Frames of the recorded chunks whose bits are set, read a few MiB at a time."""
    for group in _groups(records, READ_GROUP_BYTES):
        stored = await asyncio.to_thread(cache.read_indexed, blob_id, group)
        for record, data in zip(group, stored, strict=True):
            if data is not None:
                yield Frame(blob_id, record.index, data, _codec(record))


def _groups(records: Sequence[ChunkRecord], limit: int) -> list[list[ChunkRecord]]:
    """Consecutive records cut into groups of at most `limit` stored bytes (or one chunk)."""
    groups: list[list[ChunkRecord]] = []
    size = 0
    for record in records:
        if not groups or (groups[-1] and size + record.compressed_size > limit):
            groups.append([])
            size = 0
        groups[-1].append(record)
        size += record.compressed_size
    return groups


def _codec(record: ChunkRecord) -> Codec:
    if not record.flags & CHUNK_COMPRESSED:  # stored raw
        return Codec.NONE
    return Codec(record.compressor) if record.compressor in Codec._value2member_map_ else Codec.NONE


async def serve_bitmap(request: web.Request) -> web.Response:
    blob_id = request.match_info["blob_id"]
    try:
        parse_run(blob_id, "0", "1")
    except BadChunkRequest as exc:
        return error(400, "bad_request", str(exc))
    bitmap = await asyncio.to_thread(request.app[CACHE].present_indices, blob_id)
    return web.Response(body=bitmap, content_type="application/octet-stream")


async def serve_metrics(request: web.Request) -> web.Response:
    body = request.app[METRICS].exposition()
    return web.Response(body=body, headers={"Content-Type": "text/plain; version=0.0.4"})


async def healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok")
