"""`dfget` against real processes on loopback: a supernode, dfdaemon peers and a file
server (aiohttp serving a directory, with Range), all stopped in teardown.

Exit codes (0, 2, 3, 4, 5), a resumed partial download, and a file that peer A fetched
from the origin reaching peer B (and a one-shot `--supernode` dfget) with the origin stopped.
"""

from __future__ import annotations

import hashlib
import json
import random
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from peer._pieces import PIECE_SIZE

from .cluster import BIN, TOKEN, Cluster, Peer, free_port, http_get, stop_process, wait_for

FILE_SERVER = """
import sys
from aiohttp import web
app = web.Application()
app.router.add_static("/", sys.argv[1])
web.run_app(app, host="127.0.0.1", port=int(sys.argv[2]), print=None)
"""


class FileServer:
    """`aiohttp` serving `root` over plain HTTP on loopback, in its own process."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        argv = [sys.executable, "-c", FILE_SERVER, str(self.root), str(self.port)]
        self.process = subprocess.Popen(argv, stderr=subprocess.DEVNULL)
        wait_for("the file server", self._up, timeout=10)

    def _up(self) -> bool:
        try:
            http_get(self.url + "/", timeout=1)
        except OSError as exc:
            return "HTTP Error" in str(exc)  # 403/404 for the directory: it is up
        return True

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process)


@pytest.fixture
def files(tmp_path: Path) -> Iterator[FileServer]:
    root = tmp_path / "files"
    root.mkdir()
    rng = random.Random(5)
    (root / "big.bin").write_bytes(rng.randbytes(2 * PIECE_SIZE + 123_457))  # 3 pieces
    (root / "small.txt").write_bytes(b"hello mesh\n" * 1000)
    (root / "empty").write_bytes(b"")
    server = FileServer(root)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def mesh(tmp_path: Path) -> Iterator[Cluster]:
    found = Cluster(tmp_path / "cluster")
    found.base.mkdir()
    try:
        found.start_supernode()
        yield found
    finally:
        found.close()


def dfget(*args: str) -> subprocess.CompletedProcess[str]:
    exe = BIN / "dfget"
    argv = [str(exe)] if exe.exists() else [sys.executable, "-m", "peer.dfget"]
    return subprocess.run([*argv, "--quiet", *args], capture_output=True, text=True, timeout=60)


def daemon(peer: Peer) -> str:
    return peer.url.removeprefix("http://")


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def test_exit_codes(mesh: Cluster, files: FileServer, tmp_path: Path) -> None:
    peer = mesh.start_peer("a")
    out = tmp_path / "out"
    data = (files.root / "big.bin").read_bytes()

    ok = dfget(f"{files.url}/big.bin", "-O", str(out), "--daemon", daemon(peer))
    assert ok.returncode == 0, ok.stderr
    assert out.read_bytes() == data
    assert not out.with_name("out.part").exists()

    small = sha256((files.root / "small.txt").read_bytes())
    given = dfget(f"{files.url}/small.txt", "-O", str(tmp_path / "s"), "--daemon", daemon(peer),
                  "--digest", small)  # fmt: skip
    assert given.returncode == 0, given.stderr

    empty = dfget(f"{files.url}/empty", "-O", str(tmp_path / "e"), "--daemon", daemon(peer))
    assert empty.returncode == 0, empty.stderr
    assert (tmp_path / "e").read_bytes() == b""

    missing = dfget(f"{files.url}/nope.bin", "-O", str(tmp_path / "nope"), "--daemon", daemon(peer))
    assert missing.returncode == 3, missing.stderr
    assert "404" in missing.stderr and not (tmp_path / "nope").exists()

    wrong = dfget(f"{files.url}/big.bin", "-O", str(tmp_path / "w"), "--daemon", daemon(peer),
                  "--digest", "sha256:" + "0" * 64)  # fmt: skip
    assert wrong.returncode == 4, wrong.stderr
    assert not list(tmp_path.glob("w*"))  # nothing renamed into place, no part left

    dead = dfget(f"{files.url}/big.bin", "-O", str(tmp_path / "d"), "--daemon",
                 f"127.0.0.1:{free_port()}")  # fmt: skip
    assert dead.returncode == 5, dead.stderr
    assert len(dead.stderr.strip().splitlines()) == 1

    unwritable = tmp_path / "no-such-dir" / "f"  # a local failure, not the network's
    local = dfget(f"{files.url}/small.txt", "-O", str(unwritable), "--daemon", daemon(peer))
    assert local.returncode == 1, local.stderr

    usage = dfget(f"{files.url}/big.bin", "-O", str(tmp_path / "u"), "--digest", "md5:x")
    assert usage.returncode == 2, usage.stderr


def test_resume_partial_download(mesh: Cluster, files: FileServer, tmp_path: Path) -> None:
    peer = mesh.start_peer("a")
    url, data = f"{files.url}/big.bin", (files.root / "big.bin").read_bytes()
    out = tmp_path / "big.bin"
    part, state = tmp_path / "big.bin.part", tmp_path / "big.bin.part.json"
    kept = PIECE_SIZE + 1000  # not on a piece boundary
    part.write_bytes(data[:kept])
    state.write_text(json.dumps({"url": url, "digest": sha256(data), "size": len(data)}))

    done = dfget(url, "-O", str(out), "--daemon", daemon(peer))
    assert done.returncode == 0, done.stderr
    assert out.read_bytes() == data and not part.exists() and not state.exists()
    assert peer.metric("dfdaemon_download_bytes_out_total") == len(data) - kept

    stale = "sha256:" + "5" * 64  # the part is of other content: dropped, started over
    part.write_bytes(b"y" * kept)
    state.write_text(json.dumps({"url": url, "digest": stale, "size": len(data)}))
    again = dfget(url, "-O", str(out), "--daemon", daemon(peer))
    assert again.returncode == 0, again.stderr
    assert out.read_bytes() == data and not part.exists() and not state.exists()

    part.write_bytes(b"x" * kept)  # a corrupt prefix: resumed, then caught by the final check
    state.write_text(json.dumps({"url": url, "digest": sha256(data), "size": len(data)}))
    bad = dfget(url, "-O", str(tmp_path / "big.bin"), "--daemon", daemon(peer))
    assert bad.returncode == 4, bad.stderr
    assert not part.exists() and not state.exists()


def test_file_reaches_peer_b_with_origin_stopped(
    mesh: Cluster, files: FileServer, tmp_path: Path
) -> None:
    a, b = mesh.start_peer("a"), mesh.start_peer("b")
    url, data = f"{files.url}/big.bin", (files.root / "big.bin").read_bytes()
    first = dfget(url, "-O", str(tmp_path / "a.bin"), "--daemon", daemon(a))
    assert first.returncode == 0, first.stderr
    assert a.metric("dfdaemon_origin_bytes_total") == len(data)
    pieces = -(-len(data) // PIECE_SIZE)
    wait_for("peer a to announce the pieces and the table",
             lambda: a.metric("dfdaemon_announced_chunks") >= pieces + 1)  # fmt: skip
    files.stop()

    second = dfget(url, "-O", str(tmp_path / "b.bin"), "--daemon", daemon(b))
    assert second.returncode == 0, second.stderr
    assert (tmp_path / "b.bin").read_bytes() == data
    assert b.metric("dfdaemon_origin_bytes_total") == 0
    assert b.metric("dfdaemon_peer_bytes_in_total") == len(data)
    assert b.metric("dfdaemon_download_mesh_tables_total") == 1

    assert mesh.supernode is not None
    one_shot = dfget(url, "-O", str(tmp_path / "c.bin"), "--supernode", mesh.supernode.url,
                     "--token", TOKEN)  # fmt: skip
    assert one_shot.returncode == 0, one_shot.stderr
    assert (tmp_path / "c.bin").read_bytes() == data
