"""The aiohttp application factory and the service's start-up and shutdown.

`make_app` builds everything synchronously (scheduler, repository, metrics, document) and
stores it under typed keys; `cleanup_ctx` steps then run in order at start and in reverse
at shutdown: migrate the database and reload state into the scheduler; start the
write-behind flusher (its last flush runs before the engine closes); sweep silent peers
and prune old reputation events; close the registry client of image preheats.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from datetime import timedelta

import msgspec
from aiohttp import web

from ._api import ENDPOINTS, role_of
from ._config import SupernodeConfig
from ._database import open_engine
from ._errors import DatabaseError
from ._http import Guard, boundary_middleware
from ._keys import CONFIG, ENGINE, METRICS, OPENAPI, REPOSITORY, RESOLVER, SUPERNODE, WRITER
from ._metrics import Metrics
from ._migrate import upgrade
from ._openapi import build_document
from ._records import utcnow
from ._repo import Repository
from ._resolve import ImageResolver
from ._service import Supernode
from ._writeback import WriteBehind

log = logging.getLogger("supernode")

TITLE = "nydus-mesh supernode"
PRUNE_INTERVAL = 3600.0
API_VERSION = "1.0.0"


def openapi_document() -> bytes:
    document = build_document((e.operation for e in ENDPOINTS), TITLE, API_VERSION)
    return msgspec.json.encode(document)


def make_app(config: SupernodeConfig) -> web.Application:
    """A supernode app; nothing touches the database until it starts."""
    metrics = Metrics()
    app = web.Application(
        client_max_size=config.max_body,
        middlewares=[
            boundary_middleware(metrics, Guard(role_of, config.token, config.admin_token))
        ],
    )
    node = Supernode(config.policy)
    engine = open_engine(config.db_url)
    repo = Repository(engine)
    metrics.watch(lambda: node.peer_count, lambda: node.blob_count, lambda: node.suspended_count)
    app[CONFIG] = config
    app[METRICS] = metrics
    app[SUPERNODE] = node
    app[ENGINE] = engine
    app[REPOSITORY] = repo
    app[WRITER] = WriteBehind(repo, node, metrics, config.flush_interval)
    app[RESOLVER] = ImageResolver(node)
    app[OPENAPI] = openapi_document()
    for endpoint in ENDPOINTS:
        app.router.add_route(endpoint.operation.method, endpoint.operation.path, endpoint.handler)
    app.cleanup_ctx.extend([_database, _write_behind, _housekeeping, _resolver])
    return app


async def _database(app: web.Application) -> AsyncIterator[None]:
    engine = app[ENGINE]
    try:
        if app[CONFIG].migrate:
            await upgrade(engine)
        snapshot = await app[REPOSITORY].load()
        app[SUPERNODE].restore(snapshot)
        log.info(
            "loaded %d peers, %d bitmaps, %d jobs",
            len(snapshot.peers),
            len(snapshot.bitmaps),
            len(snapshot.jobs),
        )
        yield
    finally:
        await engine.dispose()


async def _write_behind(app: web.Application) -> AsyncIterator[None]:
    writer = app[WRITER]
    writer.start()
    yield
    try:
        await writer.close()
    except DatabaseError as exc:
        log.error(
            "the last write-behind flush failed; %d batches are lost: %s", writer.backlog, exc
        )


async def _housekeeping(app: web.Application) -> AsyncIterator[None]:
    tasks = [
        asyncio.create_task(_sweep(app[SUPERNODE], app[CONFIG].expire_interval)),
        asyncio.create_task(_prune(app[REPOSITORY], app[CONFIG].event_retention)),
    ]
    yield
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def _sweep(node: Supernode, interval: float) -> None:
    """Forget peers whose heartbeats stopped (and with them their chunks)."""
    while True:
        await asyncio.sleep(interval)
        gone = node.expire()
        if gone:
            log.info("expired %d silent peers", len(gone))


async def _prune(repo: Repository, retention: float) -> None:
    """Drop reputation events older than `retention` seconds, hourly."""
    while True:
        try:
            pruned = await repo.prune_events(utcnow() - timedelta(seconds=retention))
            if pruned:
                log.info("pruned %d old reputation events", pruned)
        except DatabaseError as exc:
            log.warning("pruning reputation events failed: %s", exc)
        await asyncio.sleep(PRUNE_INTERVAL)


async def _resolver(app: web.Application) -> AsyncIterator[None]:
    yield
    await app[RESOLVER].close()
