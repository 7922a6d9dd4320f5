"""Whole files through the mesh: the daemon side of `dfget` and of the registry mirror.

`Downloader.fetch(url, digest)` makes every piece of the file (see `_pieces` for the piece
model and its trust rules) present and verified in the chunk cache, and returns the
`Download` (blob id and piece table); `Downloader.read` then streams the file from the
cache. Where the pieces come from:

1. the cache, when this daemon holds the file's piece table already;
2. else the mesh: the supernode names parents holding the table blob; the table is taken
   from one (its whole-file digest must be the one expected), then the pieces come
   through `MeshSource` (cache -> parents -> origin by Range), each checked against the
   table's sha256;
3. else the origin: one streaming GET, cut into pieces, each hashed and stored, the
   whole file hashed; the table is published only if the whole digest is the expected one.

In every case the whole-file sha256 is checked over the verified pieces before `fetch`
returns, so nothing is streamed out before the whole file is known good: a caller pays the
full fetch before its first byte, and a mismatch is an error status, never a truncated
stream.

HTTP surface, on the chunk server's port:

    GET /api/v1/download?url=URL[&digest=sha256:...][&offset=N]

Only clients on this host (loopback) may ask: the daemon fetches whatever URL it is given.
`200` with the bytes from `offset`, headers `X-Dfget-Size` (the whole size) and
`X-Dfget-Digest` (the whole file's sha256). Errors are JSON `{"error", "detail"}`:
`400` bad request, `403` not a local client, `404 not_found` (the origin said so and no
peer had it), `409 digest_mismatch`, `502 origin_unreachable` / `origin_error`.

Rule: a piece is stored only after its sha256 was computed from the bytes (origin) or
checked against the table (mesh); the table is published only after the whole file checked.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ipaddress
import logging
import time
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass

import aiohttp
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter

from protocol import FromParents, Parent, RetryLater, ScheduleRequest
from rafs import ChunkInfo, RafsError
from rafs._cache import BlobCache, CachedSource
from rafs._chunksource import BlobRef, FetchedChunk, verify_chunk

from ._catalog import BlobCatalog, BlobEntry
from ._errors import ParentError, PeerError
from ._mesh import Mesh, MeshSource
from ._pieces import (
    PIECE_SIZE,
    BadPieceTable,
    PieceTable,
    file_blob_id,
    parse_digest,
    piece_chunk,
    piece_ref,
    table_blob_id,
)
from ._wire import API

log = logging.getLogger("dfdaemon.download")

DOWNLOAD_PATH = API + "/download"
WINDOW_PIECES = 8  # pieces asked of the mesh (and hashed) at a time


class DownloadError(PeerError):
    """A file could not be delivered; `status` and `code` are what the HTTP API answers."""

    status = 502
    code = "origin_error"


class NotFoundAtOrigin(DownloadError):
    status, code = 404, "not_found"


class ContentDigestMismatch(DownloadError):
    status, code = 409, "digest_mismatch"


class OriginUnreachable(DownloadError):
    status, code = 502, "origin_unreachable"


@dataclass(frozen=True, slots=True)
class Download:
    """A file whose every piece is verified in the cache."""

    blob_id: str
    table: PieceTable


class DownloadMetrics:
    """Counters of the download service, in the daemon's metrics registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.files = Counter("dfdaemon_download_files", "files delivered whole", registry=r)
        self.bytes_out = Counter(
            "dfdaemon_download_bytes_out", "file bytes streamed to dfget and mirror clients",
            registry=r,
        )  # fmt: skip
        self.origin_files = Counter(
            "dfdaemon_download_origin_files", "files fetched whole from the origin", registry=r
        )
        self.mesh_tables = Counter(
            "dfdaemon_download_mesh_tables", "piece tables taken from parents", registry=r
        )


class Downloader:
    """Files by URL (and digest) through cache -> mesh -> origin."""

    def __init__(self, cache: BlobCache, catalog: BlobCatalog, mesh: Mesh) -> None:
        self.cache = cache
        self.catalog = catalog
        self.mesh = mesh
        self.metrics = DownloadMetrics(mesh.metrics.registry)
        self.table_wait = 2.0  # how long a RetryLater for a table is followed
        self._locks: dict[str, asyncio.Lock] = {}
        self._session: aiohttp.ClientSession | None = None

    def http(self) -> aiohttp.ClientSession:
        if self._session is None:
            timeout = aiohttp.ClientTimeout(total=None, sock_connect=5, sock_read=30)
            self._session = aiohttp.ClientSession(timeout=timeout, auto_decompress=False)
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def fetch(
        self, url: str, digest: str | None, headers: Mapping[str, str] | None = None
    ) -> Download:
        """Every piece verified in the cache, and the whole file checked. `headers` go
        with origin requests (e.g. a registry's Authorization)."""
        blob_id = file_blob_id(url, digest)
        origin = OriginFile(self.http(), url, dict(headers or {}))
        async with self._locks.setdefault(blob_id, asyncio.Lock()):
            table = await asyncio.to_thread(read_table, self.cache, table_blob_id(blob_id))
            if table is None or not await self._complete(blob_id, table):
                table = await self._fill(blob_id, table, origin, digest)
        self.metrics.files.inc()
        return Download(blob_id, table)

    async def _fill(
        self, blob_id: str, table: PieceTable | None, origin: OriginFile, digest: str | None
    ) -> PieceTable:
        """Fetch what is missing: by the table held, else by a parent's, else the origin."""
        if table is not None:  # ours: published after its whole-file check
            await self._from_mesh(blob_id, table, origin, None)
            return table
        found = await self._mesh_table(blob_id, digest)
        if found is None:
            return await self._from_origin(blob_id, origin, digest)
        self.metrics.mesh_tables.inc()
        parent_id, table = found
        await self._from_mesh(blob_id, table, origin, parent_id)
        return table

    async def _complete(self, blob_id: str, table: PieceTable) -> bool:
        missing = await asyncio.to_thread(self.cache.missing, blob_id, table.infos())
        return not missing

    async def read(
        self, download: Download, offset: int = 0, end: int | None = None
    ) -> AsyncIterator[bytes]:
        """The file's bytes `[offset, end)`, piece by piece from the cache."""
        end = download.table.size if end is None else end
        for info in download.table.infos():
            start = info.compressed_offset
            if start + info.compressed_size <= offset or start >= end:
                continue
            raw = await asyncio.to_thread(self.cache.read_stored, download.blob_id, info)
            if raw is None:
                raise DownloadError(f"blob {download.blob_id}: piece {info.index} was evicted")
            block = raw[max(0, offset - start) : end - start]
            self.metrics.bytes_out.inc(len(block))
            yield block

    # --- the table: from a parent ---------------------------------------------------------

    async def _mesh_table(self, blob_id: str, digest: str | None) -> tuple[str, PieceTable] | None:
        """(parent id, table) from a parent holding the table blob, or None."""
        if not self.mesh.session.registered:
            return None
        table_id = table_blob_id(blob_id)
        deadline = time.monotonic() + self.table_wait
        while True:
            request = ScheduleRequest(peer_id=self.mesh.session.peer_id, blob_id=table_id,
                                      chunk_count=1, wanted=((0, 1),))  # fmt: skip
            answer = await self.mesh.schedule(request)
            if answer is None:
                return None
            for plan in answer.plans:
                for parent in plan.parents if isinstance(plan, FromParents) else ():
                    table = await self._table_from(parent, table_id, digest)
                    if table is not None:
                        return parent.peer_id, table
            waiting = any(isinstance(plan, RetryLater) for plan in answer.plans)
            if not waiting or time.monotonic() >= deadline:
                return None
            await asyncio.sleep(0.2)

    async def _table_from(
        self, parent: Parent, table_id: str, digest: str | None
    ) -> PieceTable | None:
        if parent.peer_id in self.mesh.distrusted(table_id):
            return None
        try:
            stream = self.mesh.transport.fetch(parent, table_id, 0, 1, 10.0)
            async with contextlib.aclosing(stream) as frames:
                async for frame in frames:
                    table = PieceTable.decode(frame.payload)
                    if digest is not None and table.content_digest != digest:
                        raise BadPieceTable(f"table for {table.content_digest}, not {digest}")
                    return table
        except (ParentError, BadPieceTable) as exc:
            log.info("no piece table from parent %s for %s: %s", parent.peer_id, table_id, exc)
        return None

    # --- pieces: through the mesh ---------------------------------------------------------

    async def _from_mesh(
        self, blob_id: str, table: PieceTable, origin: OriginFile, parent_id: str | None
    ) -> None:
        """Fill the cache with every piece (checked against the table), then check the
        whole; a wrong whole discards the pieces and distrusts the table's parent."""
        ref = piece_ref(blob_id, table.size)
        infos = table.infos()
        self.catalog.add(BlobEntry(ref, table.count, None, dict(enumerate(infos))))
        source = CachedSource(self.cache, MeshSource(self.mesh, self.catalog, origin))
        whole = hashlib.sha256()
        try:
            for start in range(0, len(infos), WINDOW_PIECES):
                window = infos[start : start + WINDOW_PIECES]
                chunks = await source.get(ref, window)
                await asyncio.to_thread(_hash_all, whole, chunks)
            await source.flush()
        except RafsError as exc:
            raise DownloadError(f"{origin.url}: a piece does not match its table: {exc}") from exc
        finally:
            await source.close()
        if f"sha256:{whole.hexdigest()}" != table.content_digest:
            await asyncio.to_thread(_discard, self.cache, blob_id, infos)
            if parent_id is not None:
                self.mesh.distrusted(table_blob_id(blob_id)).add(parent_id)
            raise ContentDigestMismatch(f"{origin.url}: pieces hash to sha256:{whole.hexdigest()}, "
                                        f"the table says {table.content_digest}")  # fmt: skip
        await self._publish(blob_id, table)

    async def _publish(self, blob_id: str, table: PieceTable) -> None:
        """Store the table as its blob's one chunk and make both blobs known (announced)."""
        infos = table.infos()
        self.catalog.add(BlobEntry(piece_ref(blob_id, table.size), table.count, None,
                                   dict(enumerate(infos))))  # fmt: skip
        table_ref = piece_ref(table_blob_id(blob_id))
        chunk = table.table_chunk()
        await asyncio.to_thread(self.cache.put_many, table_ref, [chunk])
        self.catalog.add(BlobEntry(table_ref, 1, None, {0: chunk.info}))

    # --- pieces: from the origin ----------------------------------------------------------

    async def _from_origin(
        self, blob_id: str, origin: OriginFile, digest: str | None
    ) -> PieceTable:
        ref = piece_ref(blob_id)
        whole = hashlib.sha256()
        digests: list[bytes] = []
        size = 0
        async for piece in _pieces_of(origin.stream()):
            chunk = await asyncio.to_thread(_keep, self.cache, ref, whole, len(digests), size,
                                            piece)  # fmt: skip
            digests.append(chunk.info.digest)
            size += len(piece)
            self.mesh.metrics.origin_bytes.inc(len(piece))
            self.mesh.metrics.origin_chunks.inc()
        content = f"sha256:{whole.hexdigest()}"
        table = PieceTable(size, PIECE_SIZE, tuple(digests), content)
        if digest is not None and content != digest:
            await asyncio.to_thread(_discard, self.cache, blob_id, table.infos())
            raise ContentDigestMismatch(
                f"{origin.url}: the origin sent {content}, expected {digest}"
            )
        self.metrics.origin_files.inc()
        await self._publish(blob_id, table)
        return table


def _keep(
    cache: BlobCache, ref: BlobRef, whole: hashlib._Hash, index: int, offset: int, piece: bytes
) -> FetchedChunk:
    chunk = piece_chunk(index, offset, piece)
    whole.update(piece)
    cache.put_many(ref, [chunk])
    return chunk


def _hash_all(whole: hashlib._Hash, chunks: Sequence[FetchedChunk]) -> None:
    for chunk in chunks:
        whole.update(chunk.data)


def _discard(cache: BlobCache, blob_id: str, infos: Sequence[ChunkInfo]) -> None:
    for info in infos:
        cache.discard(blob_id, info)


def read_table(cache: BlobCache, table_id: str) -> PieceTable | None:
    """The piece table this cache holds for a file (checked against its record), or None."""
    records = cache.chunk_records(table_id, 0, 1)
    if not records:
        return None
    raw = cache.read_indexed(table_id, records)[0]
    if raw is None or hashlib.sha256(raw).digest() != records[0].digest:
        return None
    try:
        return PieceTable.decode(raw)
    except BadPieceTable as exc:
        log.warning("ignoring piece table %s: %s", table_id, exc)
        return None


async def _pieces_of(blocks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """Re-cut a byte stream into `PIECE_SIZE` pieces (the last may be shorter)."""
    buffer = bytearray()
    async for block in blocks:
        buffer += block
        while len(buffer) >= PIECE_SIZE:
            yield bytes(buffer[:PIECE_SIZE])
            del buffer[:PIECE_SIZE]
    if buffer:
        yield bytes(buffer)


# --- the origin over HTTP: translated to DownloadError here only --------------------------


class OriginFile:
    """One file at the origin over HTTP; also the `ChunkSource` of its pieces by Range,
    each checked against its sha256 (the mesh's fallback)."""

    def __init__(self, http: aiohttp.ClientSession, url: str, headers: dict[str, str]) -> None:
        self.http = http
        self.url = url
        self.headers = headers

    async def stream(self) -> AsyncIterator[bytes]:
        """The whole file, in blocks."""
        with _translated(self.url):
            async with self.http.get(self.url, headers=self.headers) as response:
                _check_origin(self.url, response.status)
                async for block in response.content.iter_chunked(1 << 20):
                    yield block

    async def range(self, offset: int, length: int) -> bytes:
        """Bytes `[offset, offset+length)` (a server ignoring Range costs a full read)."""
        headers = {**self.headers, "Range": f"bytes={offset}-{offset + length - 1}"}
        with _translated(self.url):
            async with self.http.get(self.url, headers=headers) as response:
                _check_origin(self.url, response.status)
                body = await response.read()
        data = body if response.status == 206 else body[offset : offset + length]
        if len(data) != length:
            raise DownloadError(f"{self.url}: {len(data)} bytes at {offset}, expected {length}")
        return data

    async def get(self, blob: BlobRef, chunks: Sequence[ChunkInfo]) -> list[FetchedChunk]:
        fetched = []
        for info in chunks:  # pieces are large: one request each
            data = await self.range(info.compressed_offset, info.compressed_size)
            fetched.append(await asyncio.to_thread(verify_chunk, blob, info, data))
        return fetched

    async def close(self) -> None:
        """The HTTP session is the downloader's."""


def _check_origin(url: str, status: int) -> None:
    if status == 404:
        raise NotFoundAtOrigin(f"{url}: not found (HTTP 404)")
    if status >= 400:
        raise DownloadError(f"{url}: HTTP {status}")


@contextlib.contextmanager
def _translated(url: str) -> Iterator[None]:
    try:
        yield
    except TimeoutError as exc:
        raise OriginUnreachable(f"{url}: timed out") from exc
    except aiohttp.ClientConnectorError as exc:
        raise OriginUnreachable(f"{url}: {exc}") from exc
    except (aiohttp.ClientError, OSError) as exc:
        raise DownloadError(f"{url}: {type(exc).__name__}: {exc}") from exc


# --- the endpoint -----------------------------------------------------------------------

DOWNLOADER = web.AppKey("downloader", Downloader)


def add_download_routes(app: web.Application, downloader: Downloader) -> None:
    app[DOWNLOADER] = downloader
    app.router.add_get(DOWNLOAD_PATH, download_file, allow_head=False)
    app.cleanup_ctx.append(_closing)


async def _closing(app: web.Application) -> AsyncIterator[None]:
    yield
    await app[DOWNLOADER].close()


def _from_this_host(remote: str | None) -> bool:
    try:
        return remote is not None and ipaddress.ip_address(remote).is_loopback
    except ValueError:
        return False


def _error(status: int, code: str, detail: str) -> web.Response:
    return web.json_response({"error": code, "detail": detail}, status=status)


async def download_file(request: web.Request) -> web.StreamResponse:
    if not _from_this_host(request.remote):  # it fetches any URL asked: not an open proxy
        return _error(403, "forbidden", f"downloads are for local clients, not {request.remote}")
    query = request.query
    url, offset = query.get("url", ""), query.get("offset", "0")
    if not url.startswith(("http://", "https://")) or not offset.isdigit():
        return _error(400, "bad_request", f"url {url!r} / offset {offset!r}")
    try:
        digest = parse_digest(query["digest"]) if "digest" in query else None
        download = await request.app[DOWNLOADER].fetch(url, digest)
    except ValueError as exc:
        return _error(400, "bad_request", str(exc))
    except DownloadError as exc:
        return _error(exc.status, exc.code, str(exc))
    return await stream_file(request, request.app[DOWNLOADER], download, (int(offset), None))


async def stream_file(
    request: web.Request,
    downloader: Downloader,
    download: Download,
    span: tuple[int, int | None] = (0, None),
    headers: dict[str, str] | None = None,
) -> web.StreamResponse:
    """Answer with bytes `[offset, end)` of the file (the whole is verified already):
    `200` for the rest of the file from `offset`, `206` when `end` is given."""
    table = download.table
    offset, end = span
    if offset > table.size or (end is not None and not offset < end <= table.size):
        return _error(416, "bad_range", f"range {offset}-{end} of a file of {table.size}")
    response = web.StreamResponse(headers={
        "X-Dfget-Size": str(table.size), "X-Dfget-Digest": table.content_digest,
        "Content-Type": "application/octet-stream", **(headers or {})})  # fmt: skip
    if end is not None:
        response.set_status(206)
        response.headers["Content-Range"] = f"bytes {offset}-{end - 1}/{table.size}"
    response.content_length = (end if end is not None else table.size) - offset
    await response.prepare(request)
    if request.method != "HEAD":
        async for block in downloader.read(download, offset, end):
            await response.write(block)
    await response.write_eof()
    return response
