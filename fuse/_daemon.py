"""One mount: a bootstrap served by pyfuse3 on the asyncio (uvloop) event loop.

The daemon checks the mountpoint and /dev/fuse before it mounts, so a busy mountpoint or a
machine without FUSE is one clear error. It runs until SIGINT/SIGTERM or an external
unmount, then unmounts cleanly. Prefetch and the API socket run beside the filesystem.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyfuse3
import pyfuse3.asyncio
from aiohttp import web

from rafs import Bootstrap, ChunkInfo, RafsError
from rafs._chunksource import ChunkSource

from ._api import Counters, make_app, new_registry
from ._fs import RafsFilesystem
from ._prefetch import Prefetcher
from ._reader import FileReader

log = logging.getLogger("nydusd")


class MountError(RafsError):
    """The filesystem could not be mounted (busy mountpoint, no FUSE, no permission)."""


@dataclass
class DaemonConfig:
    boot: Bootstrap
    source: ChunkSource
    mountpoint: Path
    image: str  # what is mounted, for the API: a bootstrap path or an image reference
    apisock: Path | None = None
    prefetch: list[ChunkInfo] = field(default_factory=list)
    allow_other: bool = True
    counters: Callable[[], dict[str, float]] = dict


def check_mountpoint(mountpoint: Path) -> None:
    if not os.path.exists("/dev/fuse"):
        raise MountError("FUSE is not available: /dev/fuse is missing (load the fuse module)")
    if not mountpoint.is_dir():
        raise MountError(f"mountpoint {mountpoint} is not a directory")
    if os.path.ismount(mountpoint):
        raise MountError(f"mountpoint {mountpoint} is busy: something is already mounted there")


class Daemon:
    def __init__(self, config: DaemonConfig) -> None:
        self.config = config
        self.reader = FileReader(config.boot, config.source)
        self.fs = RafsFilesystem(config.boot, self.reader)
        self.prefetcher = Prefetcher(config.boot, config.source)
        self.state = "INIT"
        registry, self.latency = new_registry(Counters(self._counters, self._gauges))
        self.reader.on_fetch = self.latency.observe
        self.registry = registry
        self._runner: web.AppRunner | None = None

    def _counters(self) -> dict[str, float]:
        s = self.reader.stats
        found: dict[str, float] = {
            "reads_total": s.reads,
            "read_bytes_total": s.bytes_read,
            "memo_hits_total": s.memo_hits,
            "chunks_fetched_total": s.chunks_fetched,
        }
        found.update(self.config.counters())
        return found

    def _gauges(self) -> dict[str, float]:
        p = self.prefetcher.state
        return {"prefetch_chunks_total": p.total_chunks, "prefetch_chunks_done": p.done_chunks}

    def describe(self) -> dict[str, Any]:
        p = self.prefetcher.state
        return {
            "state": self.state,
            "mountpoint": str(self.config.mountpoint),
            "image": self.config.image,
            "rafs_version": self.config.boot.version,
            "prefetch": {
                "total_chunks": p.total_chunks,
                "done_chunks": p.done_chunks,
                "failed_batches": p.failed_batches,
                "finished": p.finished,
            },
        }

    async def run(self) -> None:
        check_mountpoint(self.config.mountpoint)
        pyfuse3.asyncio.enable()
        options = set(pyfuse3.default_options) | {"ro", "fsname=nydus-mesh", "subtype=nydusd"}
        if self.config.allow_other:
            options.add("allow_other")
        try:
            pyfuse3.init(self.fs, str(self.config.mountpoint), options)
        except RuntimeError as exc:
            raise MountError(f"cannot mount {self.config.mountpoint}: {exc}") from exc
        self.state = "RUNNING"
        log.info("mounted %s at %s", self.config.image, self.config.mountpoint)
        try:
            await self._serve()
        finally:
            self.state = "STOPPING"
            pyfuse3.close(unmount=True)
            await self._stop_api()
            log.info("unmounted %s", self.config.mountpoint)

    async def _serve(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, pyfuse3.terminate)
        await self._start_api()
        prefetch = None
        if self.config.prefetch:
            prefetch = asyncio.create_task(self.prefetcher.run(self.config.prefetch))
        try:
            await pyfuse3.main()
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
            if prefetch is not None:
                prefetch.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await prefetch

    async def _start_api(self) -> None:
        if self.config.apisock is None:
            return
        self.config.apisock.unlink(missing_ok=True)
        self._runner = web.AppRunner(make_app(self.describe, self.registry), access_log=None)
        await self._runner.setup()
        await web.UnixSite(self._runner, str(self.config.apisock)).start()

    async def _stop_api(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            if self.config.apisock is not None:
                self.config.apisock.unlink(missing_ok=True)
