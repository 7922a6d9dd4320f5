"""Real FUSE mounts of images: the tree, its metadata and content, as the kernel shows them."""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import os
import re
import shutil
import signal
import stat
import subprocess
from pathlib import Path

import aiohttp
import pytest

from tests.rafs.trees import make_rich_tree, tree_entries

from .conftest import NYDUSD, Mounter, build_image

VECTORS = Path(__file__).resolve().parents[3] / "shared/vectors/nydus"


def test_rich_tree_mounts_with_everything_preserved(tmp_path: Path, mounter: Mounter) -> None:
    src = make_rich_tree(tmp_path / "src")
    boot, blobs = build_image(src, tmp_path, "--chunk-size", "0x1000")
    m = mounter.mount("-B", str(boot), "-D", str(blobs))
    want, want_links = tree_entries(src)
    got, got_links = tree_entries(m.mountpoint)
    assert got == want
    assert got_links == want_links
    a, b = (m.mountpoint / "bin/tool").stat(), (m.mountpoint / "etc/tool-third-name").stat()
    assert a.st_ino == b.st_ino and a.st_nlink == 3
    assert os.readlink(m.mountpoint / "etc/tool-link") == "../bin/tool"
    assert (m.mountpoint / "etc/tool-link").read_bytes() == (src / "bin/tool").read_bytes()
    assert stat.S_ISFIFO((m.mountpoint / "data/fifo").lstat().st_mode)


def test_partial_reads_and_holes(tmp_path: Path, mounter: Mounter) -> None:
    src = tmp_path / "src"
    src.mkdir()
    data = os.urandom(5 * 65536 + 123)
    (src / "f").write_bytes(data)
    with open(src / "sparse", "wb") as f:
        f.seek(10 << 20)
        f.write(b"end")
    boot, blobs = build_image(src, tmp_path, "--chunk-size", "0x10000")
    m = mounter.mount("-B", str(boot), "-D", str(blobs))
    with open(m.mountpoint / "f", "rb") as f:
        for offset, size in [(0, 1), (65535, 2), (65536 * 2 - 7, 70000), (len(data) - 5, 100)]:
            f.seek(offset)
            assert f.read(size) == data[offset : offset + size]
    assert (m.mountpoint / "sparse").read_bytes() == (src / "sparse").read_bytes()


def test_large_directory_lists_every_entry(tmp_path: Path, mounter: Mounter) -> None:
    src = tmp_path / "src"
    (src / "big").mkdir(parents=True)
    names = {f"entry-{n:05d}-{'x' * (n % 40)}" for n in range(5000)}
    for name in names:
        (src / "big" / name).write_bytes(name.encode())
    boot, blobs = build_image(src, tmp_path)
    m = mounter.mount("-B", str(boot), "-D", str(blobs))
    assert set(os.listdir(m.mountpoint / "big")) == names
    assert (m.mountpoint / "big" / "entry-04242-xx").read_bytes() == b"entry-04242-xx"


def test_concurrent_readers_get_correct_bytes(tmp_path: Path, mounter: Mounter) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for n in range(24):
        (src / f"f{n}").write_bytes(os.urandom(300_000 + n))
    boot, blobs = build_image(src, tmp_path, "--chunk-size", "0x10000")
    m = mounter.mount("-B", str(boot), "-D", str(blobs), "--cache-dir", str(tmp_path / "cache"))

    def digest(name: str) -> tuple[str, str]:
        return (
            hashlib.sha256((m.mountpoint / name).read_bytes()).hexdigest(),
            hashlib.sha256((src / name).read_bytes()).hexdigest(),
        )

    with concurrent.futures.ThreadPoolExecutor(12) as pool:
        for got, want in pool.map(digest, [f"f{n}" for n in range(24)] * 2):
            assert got == want


@pytest.mark.parametrize(
    "name", ["sha256-nocompress-repeatable", "blake3-lz4_block-non_repeatable"]
)
def test_nydus_v5_vectors_mount_with_recorded_md5s(name: str, mounter: Mounter) -> None:
    if not VECTORS.exists():
        pytest.skip(f"vectors not found at {VECTORS}")
    rep = VECTORS / "repeatable"
    m = mounter.mount("-B", str(rep / name), "-D", str(rep / "blobs"))
    text = (rep / f"{name}.result").read_text()
    expected = re.findall(r"^([0-9a-f]{32})\s+(\S+)$", text, flags=re.MULTILINE)
    assert len(expected) == 23
    for md5, path in expected:
        assert hashlib.md5((m.mountpoint / path.lstrip("/")).read_bytes()).hexdigest() == md5, path


def test_nydus_v6_vector_mounts(mounter: Mounter) -> None:
    if not VECTORS.exists():
        pytest.skip(f"vectors not found at {VECTORS}")
    m = mounter.mount(
        "-B", str(VECTORS / "bootstrap/rafs-v6-2.2.boot"), "-D", str(VECTORS / "blobs")
    )
    assert sorted(os.listdir(m.mountpoint)) == ["lib.rs", "sync_io.rs"]
    assert len((m.mountpoint / "lib.rs").read_bytes()) == 16931
    assert (m.mountpoint / "sync_io.rs").stat().st_size == 13400


async def test_api_socket_reports_state_and_metrics(tmp_path: Path, mounter: Mounter) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(os.urandom(200_000))
    boot, blobs = build_image(src, tmp_path)
    m = mounter.mount("-B", str(boot), "-D", str(blobs), "--cache-dir", str(tmp_path / "c"))
    (m.mountpoint / "f").read_bytes()
    conn = aiohttp.UnixConnector(path=str(m.apisock))
    async with aiohttp.ClientSession(connector=conn) as session:
        async with session.get("http://nydusd/api/v1/daemon") as resp:
            state = await resp.json()
        async with session.get("http://nydusd/api/v1/metrics") as resp:
            metrics = await resp.text()
    assert state["state"] == "RUNNING" and state["mountpoint"] == str(m.mountpoint)
    assert re.search(r"^nydusd_read_bytes_total 200000\.0$", metrics, re.MULTILINE)
    assert re.search(r"^nydusd_origin_bytes_total [1-9]", metrics, re.MULTILINE)
    assert "nydusd_chunk_fetch_seconds_bucket" in metrics


def test_busy_mountpoint_and_forged_bootstrap_are_clear_errors(
    tmp_path: Path, mounter: Mounter
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(b"x")
    boot, blobs = build_image(src, tmp_path)
    m = mounter.mount("-B", str(boot), "-D", str(blobs))
    run = subprocess.run(
        [NYDUSD, "-B", str(boot), "-D", str(blobs), "-M", str(m.mountpoint)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert run.returncode == 1 and "busy" in run.stderr and "Traceback" not in run.stderr
    forged = tmp_path / "forged.boot"
    data = bytearray(boot.read_bytes())
    data[12:16] = (3000).to_bytes(4, "little")
    forged.write_bytes(bytes(data))
    other = tmp_path / "other"
    other.mkdir()
    run = subprocess.run(
        [NYDUSD, "-B", str(forged), "-D", str(blobs), "-M", str(other)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert run.returncode == 1 and "chunk size" in run.stderr and not os.path.ismount(other)


def test_sigint_unmounts_cleanly(tmp_path: Path, mounter: Mounter) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(b"x")
    boot, blobs = build_image(src, tmp_path)
    m = mounter.mount("-B", str(boot), "-D", str(blobs))
    assert m.stop(signal.SIGINT) == 0
    assert not os.path.ismount(m.mountpoint) and not m.apisock.exists()


def test_prefetch_all_keeps_working_with_the_origin_gone(tmp_path: Path, mounter: Mounter) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for n in range(10):
        (src / f"f{n}").write_bytes(os.urandom(150_000))
    boot, blobs = build_image(src, tmp_path, "--chunk-size", "0x10000")
    m = mounter.mount(
        "-B", str(boot), "-D", str(blobs), "--cache-dir", str(tmp_path / "c"), "--prefetch-all"
    )
    wait_prefetched(m.apisock)
    shutil.rmtree(blobs)  # the origin is gone
    for n in range(10):
        assert (m.mountpoint / f"f{n}").read_bytes() == (src / f"f{n}").read_bytes()


def wait_prefetched(apisock: Path, timeout: float = 30) -> None:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = subprocess.run(
            ["curl", "-s", "--unix-socket", str(apisock), "http://x/api/v1/daemon"],
            capture_output=True,
            text=True,
            check=False,
        )
        if out.stdout and json.loads(out.stdout)["prefetch"]["finished"]:
            return
        time.sleep(0.1)
    raise AssertionError("prefetch did not finish")
