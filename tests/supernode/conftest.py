"""Fixtures for the supernode tests: a real PostgreSQL cluster and per-test database URLs.

The cluster is started once per session with the Debian server binaries (initdb, pg_ctl) in
a temporary directory, listening on 127.0.0.1 on a free port only, and stopped at teardown.
When running as root, the server runs as the `postgres` user. Without the binaries the
PostgreSQL half of the tests is skipped with a reason; SQLite always runs.
"""

from __future__ import annotations

import glob
import itertools
import json
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
from aiohttp import web

from supernode import SupernodeConfig, make_app

_PG_BIN_GLOB = "/usr/lib/postgresql/*/bin"
_database_numbers = itertools.count(1)


@dataclass(frozen=True)
class PostgresCluster:
    """A running throwaway cluster: connect as `postgres` without a password."""

    host: str
    port: int

    def admin_dsn(self) -> str:
        return f"postgresql://postgres@{self.host}:{self.port}/postgres"

    def url(self, database: str) -> str:
        return f"postgresql+asyncpg://postgres@{self.host}:{self.port}/{database}"

    async def create_database(self) -> str:
        name = f"sn_{os.getpid()}_{next(_database_numbers)}"
        conn = await asyncpg.connect(self.admin_dsn())
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()
        return self.url(name)


def _find_pg_bin() -> Path | None:
    candidates = sorted(glob.glob(_PG_BIN_GLOB), reverse=True)
    found = [Path(c) for c in candidates if (Path(c) / "initdb").exists()]
    return found[0] if found else None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _as_postgres(argv: list[str]) -> list[str]:
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--", *argv]
    return argv


def _run(argv: list[str]) -> None:
    result = subprocess.run(_as_postgres(argv), capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{argv[0]} failed ({result.returncode}): {result.stderr.strip()}")


def _make_workdir() -> Path:
    workdir = Path(tempfile.mkdtemp(prefix="nydus-mesh-pg-"))
    if os.geteuid() == 0:
        shutil.chown(workdir, user="postgres", group="postgres")
    return workdir


def _start(pg_bin: Path, workdir: Path, port: int) -> None:
    data = workdir / "data"
    _run(
        [
            str(pg_bin / "initdb"),
            "-D",
            str(data),
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
            "--no-sync",
        ]
    )
    options = (
        f"-h 127.0.0.1 -p {port} -k {workdir} -c fsync=off "
        "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
    )
    _run(
        [
            str(pg_bin / "pg_ctl"),
            "-D",
            str(data),
            "-l",
            str(workdir / "log"),
            "-o",
            options,
            "-w",
            "-t",
            "60",
            "start",
        ]
    )


def _stop(pg_bin: Path, workdir: Path) -> None:
    _run([str(pg_bin / "pg_ctl"), "-D", str(workdir / "data"), "-m", "immediate", "-w", "stop"])


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[PostgresCluster]:
    pg_bin = _find_pg_bin()
    if pg_bin is None:
        reason = f"PostgreSQL server binaries not found under {_PG_BIN_GLOB}"
        print(f"\nskipping PostgreSQL tests: {reason}")
        pytest.skip(reason)
    workdir = _make_workdir()
    port = _free_port()
    try:
        _start(pg_bin, workdir, port)
        yield PostgresCluster("127.0.0.1", port)
        _stop(pg_bin, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture(params=["sqlite", "postgresql"])
async def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty database of each supported kind."""
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'supernode.db'}"
    cluster: PostgresCluster = request.getfixturevalue("postgres_cluster")
    return await cluster.create_database()


# --- a supernode on loopback -------------------------------------------------------------

TOKEN = "cluster-secret"
ADMIN_TOKEN = "admin-secret"
PEER_AUTH = {"Authorization": f"Bearer {TOKEN}"}
MESSAGE_TYPES = {
    "/api/v1/peers/register": "register",
    "/api/v1/peers/heartbeat": "heartbeat",
    "/api/v1/peers/leave": "leave",
    "/api/v1/announce": "announce",
    "/api/v1/schedule": "schedule",
    "/api/v1/piece-results": "piece_results",
    "/api/v1/admin/preheat": "preheat",
    "/api/v1/admin/blacklist": "blacklist",
}
ADMIN_AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


@dataclass
class RunningSupernode:
    """A supernode app served by a real TCP site on 127.0.0.1."""

    url: str
    app: web.Application
    runner: web.AppRunner
    http: aiohttp.ClientSession

    async def post(self, path: str, body: Any, auth: dict[str, str] | None = None) -> Any:
        """POST a message as JSON, tagged with the type its path takes, as protocol clients do.

        Sends the cluster token unless `auth` says otherwise; returns (status, JSON or None).
        """
        headers = PEER_AUTH if auth is None else auth
        if isinstance(body, dict) and path in MESSAGE_TYPES:
            body = {"type": MESSAGE_TYPES[path], **body}
        async with self.http.post(self.url + path, json=body, headers=headers) as response:
            data = await response.read()
            return response.status, (json.loads(data) if data else None)

    async def get(self, path: str, auth: dict[str, str] | None = None, **params: Any) -> Any:
        headers = PEER_AUTH if auth is None else auth
        async with self.http.get(self.url + path, headers=headers, params=params) as response:
            data = await response.read()
            is_json = response.content_type == "application/json"
            return response.status, (json.loads(data) if is_json and data else data)

    async def stop(self) -> None:
        await self.runner.cleanup()


async def start_supernode(config: SupernodeConfig, http: aiohttp.ClientSession) -> RunningSupernode:
    app = make_app(config)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    return RunningSupernode(f"http://{host}:{port}", app, runner, http)


def supernode_config(db_url: str, **overrides: Any) -> SupernodeConfig:
    settings: dict[str, Any] = {
        "db_url": db_url,
        "token": TOKEN,
        "admin_token": ADMIN_TOKEN,
        "flush_interval": 0.05,
        "expire_interval": 0.2,
    }
    settings.update(overrides)
    return SupernodeConfig(**settings)


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def supernode(tmp_path: Path, http: aiohttp.ClientSession) -> AsyncIterator[RunningSupernode]:
    """A supernode on a fresh SQLite file, with both tokens set."""
    node = await start_supernode(supernode_config(str(tmp_path / "sn.db")), http)
    yield node
    await node.stop()
