"""The `supernode` command: database migrations and a served process stopped by SIGTERM."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
from pathlib import Path

import aiohttp
import pytest

from supernode import Repository, head_revision, open_engine
from supernode.cli import main, parse_listen

from .test_api import register_body

SUPERNODE = [sys.executable, "-m", "supernode.cli"]


def test_db_upgrade_current_downgrade(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = str(tmp_path / "sn.db")
    assert main(["--log-level", "WARNING", "db", "upgrade", "--db", db]) == 0
    assert main(["--log-level", "WARNING", "db", "current", "--db", db]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == head_revision()
    assert main(["--log-level", "WARNING", "db", "downgrade", "--db", db]) == 0
    assert main(["--log-level", "WARNING", "db", "current", "--db", db]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "(empty)"


@pytest.mark.parametrize(
    "argv",
    [
        ["db", "upgrade", "--db", "mysql://h/db"],
        ["db", "upgrade", "--db", "postgresql://h:port/db"],
        ["db", "upgrade", "--db", "/nonexistent-dir/sn.db"],
        ["serve", "--listen", "127.0.0.1:99999"],
        ["serve", "--listen", "nowhere:http"],
    ],
)
def test_failures_are_one_line(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--log-level", "ERROR", *argv]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("supernode: error: "), err


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:8002", ("127.0.0.1", 8002)),
        ("[::1]:80", ("::1", 80)),
        (":9000", ("0.0.0.0", 9000)),
        ("8002", ("127.0.0.1", 8002)),
    ],
)
def test_parse_listen(text: str, expected: tuple[str, int]) -> None:
    assert parse_listen(text) == expected


def test_a_taken_port_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        argv = ["serve", "--listen", f"127.0.0.1:{port}", "--db", str(tmp_path / "sn.db")]
        assert main(["--log-level", "ERROR", *argv]) == 1
    assert "address already in use" in capsys.readouterr().err.lower()


async def test_serve_then_sigterm_keeps_state(tmp_path: Path) -> None:
    db = str(tmp_path / "sn.db")
    env = {**os.environ, "NYDUS_MESH_TOKEN": "from-env"}
    proc = await asyncio.create_subprocess_exec(
        *SUPERNODE,
        "--log-level",
        "WARNING",
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--db",
        db,
        stdout=asyncio.subprocess.PIPE,
        env=env,
    )
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()
        url = line.rsplit(" ", 1)[1].strip()
        async with aiohttp.ClientSession() as http:
            register = url + "/api/v1/peers/register"
            async with http.post(
                register, json={"type": "register", **register_body("p1")}
            ) as response:
                assert response.status == 401
            headers = {"Authorization": "Bearer from-env"}
            async with http.post(
                register, json={"type": "register", **register_body("p1")}, headers=headers
            ) as response:
                assert response.status == 200
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 30) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    engine = open_engine(db)
    try:
        assert [p.peer_id for p in (await Repository(engine).load()).peers] == ["p1"]
    finally:
        await engine.dispose()
