"""Typed keys for the objects one supernode app shares between handlers and start-up."""

from __future__ import annotations

from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncEngine

from ._config import SupernodeConfig
from ._metrics import Metrics
from ._repo import Repository
from ._resolve import ImageResolver
from ._service import Supernode
from ._writeback import WriteBehind

CONFIG = web.AppKey("config", SupernodeConfig)
ENGINE = web.AppKey("engine", AsyncEngine)
REPOSITORY = web.AppKey("repository", Repository)
SUPERNODE = web.AppKey("supernode", Supernode)
WRITER = web.AppKey("writer", WriteBehind)
RESOLVER = web.AppKey("resolver", ImageResolver)
METRICS = web.AppKey("metrics", Metrics)
OPENAPI = web.AppKey("openapi", bytes)
