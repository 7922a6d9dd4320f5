"""Running a dfdaemon: bind, serve chunks, register, mount, and stop cleanly on a signal.

One process, one event loop (uvloop): the chunk server, the supernode session, the
announcer, the seeder and the FUSE mount all run on it. SIGINT or SIGTERM (or the mount
being unmounted from outside) ends the daemon: the mount is unmounted, the node leaves the
mesh, every client and the cache are closed.

pyfuse3 holds one FUSE session per process, so this daemon mounts one image; more than
one `--mount` is refused until a multiplexing filesystem lands.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket

import pyfuse3
from aiohttp import web

from fuse._daemon import Daemon

from ._errors import UsageError
from ._mount import prepare_mount
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
    if len(options.mounts) > 1:
        raise UsageError("one --mount per dfdaemon (pyfuse3 allows one FUSE session a process)")
    sock = bind(options.listen)
    app = make_app(options, sock.getsockname()[1])
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    try:
        await web.SockSite(runner, sock).start()
        node = app[NODE]
        print(f"dfdaemon {node.registration.peer_id} serving chunks on {node.url}", flush=True)
        await _until_stopped(node)
    finally:
        await runner.cleanup()
        sock.close()


async def _until_stopped(node: PeerNode) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        if node.options.mounts:
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
        if not mount.done() and daemon.state == "RUNNING":
            pyfuse3.terminate()
        await mount
    finally:
        stopped.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await stopped
        await prepared.source.flush()
        await prepared.source.close()
