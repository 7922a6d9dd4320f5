"""The registry mirror (`dfdaemon --mirror 127.0.0.1:PORT`): a pull-through OCI registry
whose blobs come through the mesh.

    GET|HEAD /v2/                              passed through to the upstream
    GET|HEAD /v2/NAME/manifests/REFERENCE      passed through (Accept and Authorization
                                               forwarded; status, body, Content-Type,
                                               Docker-Content-Digest, WWW-Authenticate back)
    GET      /v2/NAME/blobs/sha256:D           the blob through the mesh (`_download`)
    HEAD     /v2/NAME/blobs/sha256:D           from the piece table held, else upstream

Blob GETs honour `Range: bytes=N-[M]` (206), so a client can resume a broken transfer.

The upstream is the registry named by the request's `ns=` query parameter (what containerd
sends; `docker.io` means its API host; plain HTTP for a loopback host or with
`--insecure`, else HTTPS), else
`--mirror-upstream`. A blob is keyed by its digest, so the same layer pulled through any
upstream or by `dfget` is one file of the mesh.

Verification, honestly: the whole blob is fetched (pieces from peers or the origin, each
piece checked) and its sha256 compared with the digest in the URL BEFORE the first byte of
the answer is sent. A mismatch is a `502` with a registry error body, never a truncated or
wrong blob. The price is latency: a client sees no byte of a blob until all of it is here.
Manifests are not cached: the client checks them against the digests it asked for.

Credentials are the client's: its `Authorization` goes upstream with the manifest request
and with every origin fetch of the blob, and a 401's `WWW-Authenticate` comes back so the
client can log in (Basic, or a token from the realm it names). The mirror adds none of its
own (`--registry-creds` and the Docker config are for mounts and seeds), so a pull through
it is allowed exactly when the same pull without it would be.

Rule: this app holds no state of its own besides one HTTP session; pieces, tables and
their trust are `_download`'s.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import re
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web

from ._download import (
    Downloader,
    DownloadError,
    NotFoundAtOrigin,
    read_table,
    stream_file,
)
from ._pieces import file_blob_id, parse_digest, table_blob_id

log = logging.getLogger("dfdaemon.mirror")
_HUB_API = {"docker.io": "registry-1.docker.io"}  # containerd's ns= for Docker Hub
_RANGE = re.compile(r"bytes=(\d+)-(\d*)")

_PASSED_BACK = ("Content-Type", "Docker-Content-Digest", "Docker-Distribution-API-Version",
                "WWW-Authenticate", "Content-Length", "Location")  # fmt: skip


class Mirror:
    """What the mirror's handlers share: the downloader, the default upstream, HTTP."""

    def __init__(self, downloader: Downloader, upstream: str | None, insecure: bool) -> None:
        self.downloader = downloader
        self.upstream = upstream.rstrip("/") if upstream else None
        self.insecure = insecure
        self._session: aiohttp.ClientSession | None = None

    def http(self) -> aiohttp.ClientSession:
        if self._session is None:
            timeout = aiohttp.ClientTimeout(total=60, sock_connect=5)
            self._session = aiohttp.ClientSession(timeout=timeout, auto_decompress=False)
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def upstream_for(self, request: web.Request) -> str:
        """`scheme://host[:port]` of the registry this request is for."""
        ns = _HUB_API.get(request.query.get("ns", ""), request.query.get("ns"))
        if ns:
            host = ns.rsplit(":", 1)[0] if ns.count(":") == 1 else ns.strip("[]")
            scheme = "http" if self.insecure or _is_local(host) else "https"
            return f"{scheme}://{ns}"
        if self.upstream is None:
            raise web.HTTPBadRequest(text="no ns= parameter and no --mirror-upstream")
        return self.upstream


def _is_local(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


MIRROR = web.AppKey("mirror", Mirror)


def make_mirror_app(mirror: Mirror) -> web.Application:
    app = web.Application()
    app[MIRROR] = mirror
    app.router.add_get("/v2/", passthrough)
    app.router.add_get("/v2/{name:.+}/manifests/{reference}", passthrough)
    app.router.add_get("/v2/{name:.+}/blobs/{digest}", blob)
    app.cleanup_ctx.append(_closing)
    return app


async def _closing(app: web.Application) -> AsyncIterator[None]:
    yield
    await app[MIRROR].close()


async def start_mirror(
    downloader: Downloader, listen: tuple[str, int], upstream: str | None, insecure: bool
) -> web.AppRunner:
    """Serve the mirror on `listen` (its runner: the caller cleans it up)."""
    runner = web.AppRunner(make_mirror_app(Mirror(downloader, upstream, insecure)),
                           access_log=None, handle_signals=False)  # fmt: skip
    await runner.setup()
    try:
        await web.TCPSite(runner, listen[0], listen[1], reuse_address=True).start()
    except OSError:
        await runner.cleanup()
        raise
    log.info("registry mirror on %s:%d (upstream %s)", *listen, upstream or "from ns=")
    return runner


def registry_error(status: int, code: str, message: str) -> web.Response:
    body = {"errors": [{"code": code, "message": message}]}
    return web.json_response(body, status=status)


async def passthrough(request: web.Request) -> web.Response:
    """The upstream's answer to the same request, headers that matter included."""
    mirror = request.app[MIRROR]
    url = mirror.upstream_for(request) + request.path
    headers = {name: ", ".join(request.headers.getall(name))
               for name in ("Accept", "Authorization") if name in request.headers}  # fmt: skip
    try:
        async with mirror.http().request(request.method, url, headers=headers) as upstream:
            body = await upstream.read()
            back = {n: upstream.headers[n] for n in _PASSED_BACK if n in upstream.headers}
            status = upstream.status
    except (TimeoutError, aiohttp.ClientError, OSError) as exc:
        return registry_error(502, "UNAVAILABLE", f"{url}: {type(exc).__name__}: {exc}")
    if request.method == "HEAD":
        return web.Response(status=status, headers=back)
    back.pop("Content-Length", None)
    return web.Response(status=status, body=body, headers=back)


async def blob(request: web.Request) -> web.StreamResponse:
    mirror = request.app[MIRROR]
    try:
        digest = parse_digest(request.match_info["digest"])
    except ValueError as exc:
        return registry_error(400, "DIGEST_INVALID", str(exc))
    url = f"{mirror.upstream_for(request)}/v2/{request.match_info['name']}/blobs/{digest}"
    if request.method == "HEAD":
        return await _blob_head(request, mirror, url, digest)
    auth = (
        {"Authorization": request.headers["Authorization"]}
        if "Authorization" in request.headers
        else {}
    )
    try:
        download = await mirror.downloader.fetch(url, digest, auth)
    except NotFoundAtOrigin as exc:
        return registry_error(404, "BLOB_UNKNOWN", str(exc))
    except DownloadError as exc:
        log.warning("mirror: %s", exc)
        return registry_error(502, "UNAVAILABLE", str(exc))
    headers = {"Docker-Content-Digest": digest, "Accept-Ranges": "bytes"}
    span = _range(request.headers.get("Range"), download.table.size)
    if span is None:
        return registry_error(416, "RANGE_INVALID", f"Range {request.headers['Range']!r}")
    return await stream_file(request, mirror.downloader, download, span, headers)


def _range(header: str | None, size: int) -> tuple[int, int | None] | None:
    """`bytes=N-` or `bytes=N-M` as `(N, M+1)` (`(0, None)`: the whole); None: unusable."""
    if header is None:
        return 0, None
    match = _RANGE.fullmatch(header.strip())
    if match is None:
        return None
    first = int(match[1])
    last = min(int(match[2]), size - 1) if match[2] else size - 1
    return (first, last + 1) if first <= last else None


async def _blob_head(request: web.Request, mirror: Mirror, url: str, digest: str) -> web.Response:
    cache = mirror.downloader.cache
    table = await asyncio.to_thread(read_table, cache, table_blob_id(file_blob_id(url, digest)))
    if table is None:
        return await passthrough(request)
    headers = {"Docker-Content-Digest": digest, "Content-Type": "application/octet-stream",
               "Content-Length": str(table.size)}  # fmt: skip
    return web.Response(status=200, headers=headers)
