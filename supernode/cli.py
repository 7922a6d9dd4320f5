"""`supernode`: run the scheduler service, or migrate its database.

    supernode serve --listen ADDR [--db URL] [--token T] [--admin-token T]
    supernode db upgrade   [--db URL] [--revision R]
    supernode db downgrade [--db URL] [--revision R]
    supernode db current   [--db URL]

Tokens may also come from NYDUS_MESH_TOKEN and NYDUS_MESH_ADMIN_TOKEN, the database from
NYDUS_MESH_DB. Every failure is one line on stderr and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Sequence

import uvloop
from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncEngine

from ._app import make_app
from ._config import SupernodeConfig
from ._database import DEFAULT_DB_PATH, open_engine
from ._errors import SupernodeError
from ._migrate import current_revision, downgrade, upgrade

log = logging.getLogger("supernode")

DEFAULT_LISTEN = "127.0.0.1:8002"


class UsageError(SupernodeError):
    """A command-line value that cannot be used."""


def parse_listen(text: str) -> tuple[str, int]:
    """`HOST:PORT`, `[V6]:PORT`, `:PORT` (every interface) or `PORT` (loopback)."""
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = "127.0.0.1", text
    host = host.strip("[]") or "0.0.0.0"
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise UsageError(f"--listen {text!r}: expected HOST:PORT with a port 0-65535")
    return host, int(port)


async def serve(config: SupernodeConfig, host: str, port: int) -> None:
    """Run until SIGINT/SIGTERM, then shut down cleanly (the last flush included)."""
    runner = web.AppRunner(make_app(config), access_log=None, handle_signals=False)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        address = runner.addresses[0]
        print(f"supernode listening on http://{address[0]}:{address[1]}", flush=True)
        await _until_signalled()
    finally:
        await runner.cleanup()


async def _until_signalled() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


async def _with_engine(url: str, step: Callable[[AsyncEngine], Awaitable[None]]) -> None:
    engine = open_engine(url)
    try:
        await step(engine)
    finally:
        await engine.dispose()


async def _print_current(engine: AsyncEngine) -> None:
    print(await current_revision(engine) or "(empty)")


def _run(args: argparse.Namespace) -> None:
    if args.command == "serve":
        host, port = parse_listen(args.listen)
        config = SupernodeConfig(db_url=args.db, token=args.token, admin_token=args.admin_token)
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(serve(config, host, port))
    elif args.db_command == "upgrade":
        asyncio.run(_with_engine(args.db, lambda e: upgrade(e, args.revision or "head")))
        print(f"database at {args.revision or 'head'}")
    elif args.db_command == "downgrade":
        asyncio.run(_with_engine(args.db, lambda e: downgrade(e, args.revision or "base")))
        print(f"database at {args.revision or 'base'}")
    else:
        asyncio.run(_with_engine(args.db, _print_current))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="supernode", description=__doc__.splitlines()[0])
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING, ERROR")
    commands = parser.add_subparsers(dest="command", required=True)
    db_default = os.environ.get("NYDUS_MESH_DB", DEFAULT_DB_PATH)
    db_help = "database URL (postgresql+asyncpg://...) or SQLite file path"

    serve_cmd = commands.add_parser("serve", help="run the scheduler service")
    serve_cmd.add_argument("--listen", default=DEFAULT_LISTEN, help="HOST:PORT")
    serve_cmd.add_argument("--db", default=db_default, help=db_help)
    serve_cmd.add_argument(
        "--token",
        default=os.environ.get("NYDUS_MESH_TOKEN"),
        help="cluster token peers must send (env NYDUS_MESH_TOKEN)",
    )
    serve_cmd.add_argument(
        "--admin-token",
        default=os.environ.get("NYDUS_MESH_ADMIN_TOKEN"),
        help="token for admin endpoints (env NYDUS_MESH_ADMIN_TOKEN)",
    )

    db_cmd = commands.add_parser("db", help="migrate the database")
    db_commands = db_cmd.add_subparsers(dest="db_command", required=True)
    for name in ("upgrade", "downgrade", "current"):
        sub = db_commands.add_parser(name, help=f"{name} the schema")
        sub.add_argument("--db", default=db_default, help=db_help)
        if name != "current":
            sub.add_argument("--revision", help="target revision (head / base by default)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(message)s")
    try:
        _run(args)
    except (SupernodeError, OSError) as exc:
        print(f"supernode: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
