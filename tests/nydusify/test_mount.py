"""A converted image mounted by a real `nydusd --image` process, compared file by file with
the tree `umoci unpack` makes of the source image."""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures.registry import RegistryServer
from tests.nydusify.helpers import NYDUSD, check, convert, fuse_missing, push_image
from tests.nydusify.images import LayeredImage

Facts = tuple[
    str, int, int, int, str | None, str | None, tuple[int, int] | None, tuple[object, ...]
]


@pytest.fixture
def fuse() -> None:
    reason = fuse_missing()
    if reason:
        print(f"skipping FUSE test: {reason}")
        pytest.skip(reason)


def _xattrs(path: str) -> tuple[tuple[str, bytes], ...]:
    names = os.listxattr(path, follow_symlinks=False)
    kept = [n for n in names if n.startswith(("user.", "trusted."))]
    return tuple(sorted((n, os.getxattr(path, n, follow_symlinks=False)) for n in kept))


def _facts(path: str) -> Facts:
    st = os.lstat(path)
    mode = st.st_mode
    sha = None
    if stat.S_ISREG(mode):
        with open(path, "rb") as f:
            sha = hashlib.file_digest(f, "sha256").hexdigest()
    target = os.readlink(path) if stat.S_ISLNK(mode) else None
    device = stat.S_ISCHR(mode) or stat.S_ISBLK(mode)
    rdev = (os.major(st.st_rdev), os.minor(st.st_rdev)) if device else None
    kind = stat.S_IFMT(mode)
    return (oct(kind), stat.S_IMODE(mode), st.st_uid, st.st_gid, sha, target, rdev,
            _xattrs(path))  # fmt: skip


def tree(root: Path) -> tuple[dict[str, Facts], set[frozenset[str]]]:
    """Every path's facts (root included), and the hardlink groups by st_ino."""
    found: dict[str, Facts] = {"/": _facts(str(root))}
    inodes: dict[int, set[str]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            rel = "/" + os.path.relpath(full, root)
            found[rel] = _facts(full)
            st = os.lstat(full)
            if stat.S_ISREG(st.st_mode):
                inodes.setdefault(st.st_ino, set()).add(rel)
    return found, {frozenset(g) for g in inodes.values() if len(g) > 1}


@pytest.fixture
def nydusd_image(tmp_path: Path) -> Iterator[list[subprocess.Popen[bytes]]]:
    """Processes started by the test; each is stopped and its mount removed, always."""
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)
    mountpoint = tmp_path / "mnt"
    if os.path.ismount(mountpoint):
        subprocess.run(["fusermount3", "-uz", str(mountpoint)], check=False)


def _wait_mounted(process: subprocess.Popen[bytes], mountpoint: Path, log: Path) -> None:
    deadline = time.monotonic() + 20
    while not os.path.ismount(mountpoint):
        assert process.poll() is None, f"nydusd exited: {log.read_text()}"
        assert time.monotonic() < deadline, f"nydusd did not mount: {log.read_text()}"
        time.sleep(0.05)


def test_mounted_image_matches_the_source_tree(
    fuse: None,
    registry: RegistryServer,
    layered: LayeredImage,
    work: Path,
    tmp_path: Path,
    nydusd_image: list[subprocess.Popen[bytes]],
) -> None:
    push_image(registry, layered, "app:v1")
    convert(registry, "app:v1", "app:nydus", work)
    mountpoint, log = tmp_path / "mnt", tmp_path / "nydusd.log"
    mountpoint.mkdir()
    with open(log, "wb") as out:
        nydusd_image.append(subprocess.Popen(
            [NYDUSD, "--image", f"{registry.host}/app:nydus", "--mountpoint", str(mountpoint),
             "--cache-dir", str(tmp_path / "cache")],
            stdout=out, stderr=subprocess.STDOUT,
        ))  # fmt: skip
    _wait_mounted(nydusd_image[0], mountpoint, log)

    want, want_links = tree(layered.rootfs)
    got, got_links = tree(mountpoint)
    assert sorted(got) == sorted(want)
    for path in sorted(want):
        assert got[path] == want[path], path
    assert got_links == want_links
    assert {"/bin/tool", "/bin/tool-hardlink", "/etc/tool-third-name"} in got_links
    assert {"/new/data.bin", "/new/data-link.bin"} in got_links
    assert os.getxattr(mountpoint / "etc" / "hosts", "user.added") == b"\x00binary\xff"
    assert os.getxattr(mountpoint / "etc", "user.dir-note") == b"etc dir"  # kept under layer 2
    assert sorted(os.listdir(mountpoint / "replaced")) == ["only-new"]


def test_check_through_a_mount(
    fuse: None, registry: RegistryServer, layered: LayeredImage, work: Path
) -> None:
    push_image(registry, layered, "app:v1")
    convert(registry, "app:v1", "app:nydus", work)
    run = check(registry, "app:v1", "app:nydus", work, "--mount")
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.startswith("ok: 1")
    assert not any(os.path.ismount(p) for p in work.glob("check-*/mnt"))
    assert not list(work.glob("check-*"))  # the scratch dir is gone too
