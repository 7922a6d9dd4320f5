"""Fixtures for the supernode tests: a real PostgreSQL cluster and per-test database URLs.

The cluster is started once per session with the Debian server binaries (initdb, pg_ctl) in
a temporary directory, listening on 127.0.0.1 on a free port only, and stopped at teardown.
When running as root, the server runs as the `postgres` user. Without the binaries the
PostgreSQL half of the tests is skipped with a reason; SQLite always runs.
"""

from __future__ import annotations

import glob
import itertools
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest

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
