"""One dfdaemon's parts and its aiohttp app: the chunk server in front, the supernode
session, announcer and (with `--seed`) seeder behind it as background tasks.

`make_app` builds everything synchronously and stores it under typed keys; one
`cleanup_ctx` step starts the background tasks and, at shutdown, leaves the mesh, stops
them and closes every client and the cache. Mounts (see `_mount`) read through the node's
`mesh` and `cache`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Coroutine
from typing import Any

from aiohttp import web

from protocol import Register

from ._announce import Announcer, AnnouncingCache
from ._catalog import BlobCatalog
from ._chunkserver import CACHE, METRICS, UPLOADS, UploadSlots, add_chunk_routes
from ._download import Downloader, add_download_routes
from ._libp2p_node import chunk_transport, start_libp2p
from ._mesh import Mesh
from ._metrics import PeerMetrics
from ._options import DaemonOptions, advertised_ip, host_name, peer_id
from ._origins import OriginPool
from ._ratelimit import RateLimiter
from ._seed import Seeder
from ._session import SupernodeSession
from ._supernode import SupernodeClient

log = logging.getLogger("dfdaemon")


class PeerNode:
    """Everything one daemon runs besides its mounts."""

    def __init__(self, options: DaemonOptions, port: int) -> None:
        self.options = options
        self.metrics = PeerMetrics()
        self.cache = AnnouncingCache(options.cache_path, size_limit=options.cache_size)
        limiter = RateLimiter(options.upload_limit) if options.upload_limit else None
        self.uploads = UploadSlots(options.upload_slots, limiter)
        self.metrics.watch_uploads(lambda: self.uploads.in_flight)
        try:
            self.p2p = start_libp2p(options, self.cache, self.metrics, self.uploads)
        except BaseException:
            self.cache.close()
            raise
        self.catalog = BlobCatalog(options.data_dir / "blobs")
        self.origins = OriginPool(options.data_dir / "seed-bootstraps", options.credentials)
        self.client = SupernodeClient(options.supernode, options.token)
        multiaddrs = self.p2p.addrs if self.p2p is not None else ()
        self.registration = _registration(options, port, multiaddrs)
        self.session = SupernodeSession(
            self.client, self.registration, self.metrics, uploads=lambda: self.uploads.in_flight
        )
        self.transport = chunk_transport(options, self.p2p)
        self.mesh = Mesh(self.session, self.transport, self.metrics, options.mesh, self.cache)
        self._tasks: list[asyncio.Task[None]] = []
        self.announcer: Announcer | None = None
        self.seeder: Seeder | None = None

    @property
    def url(self) -> str:
        assert self.registration.http_url is not None
        return self.registration.http_url

    def start(self) -> None:
        """Start the background tasks (on the running loop)."""
        announcer = self.announcer = Announcer(self.session, self.catalog, self.cache)
        self.cache.notify = announcer.note_threadsafe
        self.cache.notify_gone = announcer.note_gone_threadsafe
        self.session.on_registered.append(announcer.resync)
        self.catalog.on_add.append(announcer.resync_blob)
        self._spawn(announcer.run())
        if self.options.seed:
            seeder = self.seeder = Seeder(
                self.session, self.cache, self.catalog, self.origins, self.metrics
            )
            self.session.on_seed_tasks = seeder.submit
            self._spawn(seeder.run())
        self._spawn(self.session.run())

    def _spawn(self, job: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(job)
        task.add_done_callback(_log_crash)
        self._tasks.append(task)

    async def stop(self) -> None:
        """Leave the mesh, stop the tasks, close clients and the cache."""
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.session.leave(), 3.0)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.announcer is not None:
            await self.announcer.close()
        self.cache.notify = None
        self.cache.notify_gone = None
        await self.transport.close()
        if self.p2p is not None:
            await self.p2p.aclose()
        await self.client.close()
        await self.origins.close()
        self.cache.close()


def _log_crash(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("background task %s died", task.get_name(), exc_info=task.exception())


def _registration(options: DaemonOptions, port: int, multiaddrs: tuple[str, ...] = ()) -> Register:
    ip = advertised_ip(options)
    host = f"[{ip}]" if ":" in ip else ip
    return Register(
        peer_id=peer_id(options),
        host_name=host_name(options),
        ip=ip,
        upload_port=port,
        http_url=f"http://{host}:{port}",
        multiaddrs=multiaddrs,
        upload_capacity=options.upload_slots,
        labels={"zone": options.zone} if options.zone else {},
        seed=options.seed,
    )


NODE = web.AppKey("node", PeerNode)


def make_app(options: DaemonOptions, port: int) -> web.Application:
    """The daemon's app: chunk routes over the node; the node starts with the app."""
    node = PeerNode(options, port)
    app = web.Application()
    app[NODE] = node
    app[CACHE], app[METRICS], app[UPLOADS] = node.cache, node.metrics, node.uploads
    add_chunk_routes(app)
    app.cleanup_ctx.append(_run_node)
    add_download_routes(app, Downloader(node.cache, node.catalog, node.mesh))
    return app


async def _run_node(app: web.Application) -> AsyncIterator[None]:
    node = app[NODE]
    node.start()
    try:
        yield
    finally:
        await node.stop()
