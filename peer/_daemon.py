"""Running a dfdaemon: bind, serve chunks, register, mount, and stop cleanly on a signal.

One process, one event loop (uvloop): the chunk server, the supernode session, the
announcer, the seeder and the FUSE mount all run on it. SIGINT or SIGTERM (or the mount
being unmounted from outside) ends the daemon: the mount is unmounted, the node leaves the
mesh, every client and the cache are closed.

One `--mount` runs as `fuse._daemon.Daemon` (with its API socket); several share one FUSE
session (pyfuse3 allows one a process): see `_multifs`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
from pathlib import Path

import pyfuse3
import pyfuse3.asyncio
from aiohttp import web

from fuse._daemon import Daemon, MountError, check_mountpoint
from fuse._fs import RafsFilesystem
from fuse._reader import FileReader

from ._download import DOWNLOADER
from ._mirror import start_mirror
from ._mount import PreparedMount, prepare_mount
from ._multifs import MultiFilesystem, bind_mount, detach
from ._node import NODE, PeerNode, make_app
from ._options import DaemonOptions

log = logging.getLogger("dfdaemon")


def bind(listen: tuple[str, int]) -> socket.socket:
    """A listening socket on the address (port 0: any free port)."""
    host, port = listen
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(512)
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


async def serve(options: DaemonOptions) -> None:
    """Run until signalled (or until the mount ends), then shut everything down."""
    sock = bind(options.listen)
    try:
        app = make_app(options, sock.getsockname()[1])
    except BaseException:
        sock.close()
        raise
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    try:
        await web.SockSite(runner, sock).start()
        node = app[NODE]
        mirror = await _start_mirror(app)
        print(f"dfdaemon {node.registration.peer_id} serving chunks on {node.url}", flush=True)
        try:
            await _until_stopped(node)
        finally:
            if mirror is not None:
                await mirror.cleanup()
    finally:
        await runner.cleanup()
        sock.close()


async def _start_mirror(app: web.Application) -> web.AppRunner | None:
    """The registry mirror's runner, when `--mirror` asks for one."""
    options = app[NODE].options
    if options.mirror is None:
        return None
    downloader = app[DOWNLOADER]
    return await start_mirror(downloader, options.mirror, options.mirror_upstream, options.insecure)


async def _until_stopped(node: PeerNode) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        if len(node.options.mounts) > 1:
            await _mounted_together(node, stop)
        elif node.options.mounts:
            await _mounted(node, stop)
        else:
            await stop.wait()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


async def _mounted(node: PeerNode, stop: asyncio.Event) -> None:
    """Mount, and serve until a signal (the mount's own handlers take over while it runs)."""
    prepared = await prepare_mount(node, node.options.mounts[0], 0)
    daemon = Daemon(prepared.config)
    mount = asyncio.create_task(daemon.run())
    stopped = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait({mount, stopped}, return_when=asyncio.FIRST_COMPLETED)
        if not mount.done():  # signalled before the mount's own handlers took over
            if daemon.state == "RUNNING":
                pyfuse3.terminate()  # main() returns, even if it had not started yet
            else:
                mount.cancel()  # not started: it never mounts
        with contextlib.suppress(asyncio.CancelledError):
            await mount
    finally:
        stopped.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await stopped
        await prepared.source.flush()
        await prepared.source.close()


async def _mounted_together(node: PeerNode, stop: asyncio.Event) -> None:
    """Every image in one FUSE session, each bound onto its mountpoint; until a signal."""
    mounts = [await prepare_mount(node, spec, n) for n, spec in enumerate(node.options.mounts)]
    try:
        for prepared in mounts:
            check_mountpoint(prepared.spec.mountpoint)
        filesystems = [
            RafsFilesystem(m.config.boot, FileReader(m.config.boot, m.config.source))
            for m in mounts
        ]
        await _serve_together(node, MultiFilesystem(filesystems), mounts, stop)
    finally:
        for prepared in mounts:
            await prepared.source.flush()
            await prepared.source.close()


async def _serve_together(
    node: PeerNode, fs: MultiFilesystem, mounts: list[PreparedMount], stop: asyncio.Event
) -> None:
    root = node.options.data_dir / "fuse-root"
    root.mkdir(parents=True, exist_ok=True)
    check_mountpoint(root)
    pyfuse3.asyncio.enable()
    options = set(pyfuse3.default_options) | {"ro", "fsname=nydus-mesh", "subtype=dfdaemon"}
    try:
        pyfuse3.init(fs, str(root), options | {"allow_other"})
    except RuntimeError as exc:
        raise MountError(f"cannot mount {root}: {exc}") from exc
    session = asyncio.create_task(pyfuse3.main())
    bound: list[Path] = []
    try:
        for n, prepared in enumerate(mounts):  # the kernel asks the running session
            await asyncio.to_thread(bind_mount, root / str(n), prepared.spec.mountpoint)
            bound.append(prepared.spec.mountpoint)
            log.info("mounted %s at %s", prepared.spec.reference, prepared.spec.mountpoint)
        stopped = asyncio.create_task(stop.wait())
        await asyncio.wait({session, stopped}, return_when=asyncio.FIRST_COMPLETED)
        stopped.cancel()
    finally:
        for target in reversed(bound):
            await asyncio.to_thread(detach, target)
        if not session.done():
            pyfuse3.terminate()
        with contextlib.suppress(asyncio.CancelledError):
            await session
        pyfuse3.close(unmount=True)
        log.info("unmounted %d images", len(bound))
