"""Mounting images with a real `nydusd` process; every mount is unmounted in teardown."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

NYDUSD = str(Path(sys.executable).with_name("nydusd"))
NYDUS_IMAGE = str(Path(sys.executable).with_name("nydus-image"))


def _fuse_missing() -> str | None:
    if not os.path.exists("/dev/fuse"):
        return "/dev/fuse is missing: FUSE mounts cannot run here"
    if os.geteuid() != 0:
        return "FUSE mount tests need root here (allow_other, mknod in trees)"
    return None


@dataclass
class Mount:
    mountpoint: Path
    process: subprocess.Popen[bytes]
    log: Path
    apisock: Path

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        if os.path.ismount(self.mountpoint):
            subprocess.run(["fusermount3", "-uz", str(self.mountpoint)], check=False)
        return self.process.returncode

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


@dataclass
class Mounter:
    base: Path
    mounts: list[Mount] = field(default_factory=list)

    def mount(self, *args: str, name: str = "mnt", wait: bool = True) -> Mount:
        mountpoint = self.base / name
        mountpoint.mkdir(parents=True, exist_ok=True)
        log = self.base / f"{name}.log"
        apisock = self.base / f"{name}.sock"
        cmd = [NYDUSD, "--mountpoint", str(mountpoint), "--apisock", str(apisock), *args]
        with open(log, "wb") as out:
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
        mount = Mount(mountpoint, proc, log, apisock)
        self.mounts.append(mount)
        if wait:
            wait_mounted(mount)
        return mount

    def close(self) -> None:
        for mount in self.mounts:
            mount.stop()


def wait_mounted(mount: Mount, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if os.path.ismount(mount.mountpoint) and mount.apisock.exists():
            return
        if mount.process.poll() is not None:
            raise AssertionError(f"nydusd exited {mount.process.returncode}: {mount.log_text()}")
        time.sleep(0.05)
    raise AssertionError(f"nydusd did not mount in {timeout} s: {mount.log_text()}")


@pytest.fixture
def mounter(tmp_path: Path) -> Iterator[Mounter]:
    reason = _fuse_missing()
    if reason:
        print(f"skipping FUSE test: {reason}")
        pytest.skip(reason)
    m = Mounter(tmp_path)
    try:
        yield m
    finally:
        m.close()


def build_image(src: Path, work: Path, *extra: str) -> tuple[Path, Path]:
    boot, blobs = work / "image.boot", work / "blobs"
    subprocess.run(
        [NYDUS_IMAGE, "create", "-B", str(boot), "-D", str(blobs), *extra, str(src)],
        check=True,
        capture_output=True,
    )
    return boot, blobs


from tests.fixtures.registry import registry  # noqa: E402, F401
