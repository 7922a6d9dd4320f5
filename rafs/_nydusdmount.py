"""A Nydus image mounted by a real `nydusd --image` process, for `nydusify check --mount`.

The daemon runs as a child process (rafs does not import the FUSE package); the mount is
ready when the kernel lists it. The rule it keeps: however the block inside ends, the
daemon is stopped and the mountpoint lazily unmounted (`fusermount3 -uz`) before leaving.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from ._errors import RafsError


class MountFailed(RafsError):
    """`nydusd` did not mount the image (it exited, or took too long)."""


def find_nydusd(given: str | None) -> str:
    if given:
        return given
    beside = Path(sys.executable).with_name("nydusd")
    if beside.exists():
        return str(beside)
    found = shutil.which("nydusd")
    if found is None:
        raise MountFailed("nydusd not found (give --nydusd PATH)")
    return found


@contextlib.contextmanager
def nydusd_mount(
    image: str,
    workdir: Path,
    *,
    nydusd: str,
    insecure: bool = False,
    platform: str = "linux/amd64",
    timeout: float = 30.0,
) -> Iterator[Path]:
    """Mount `image` under `workdir`; yields the mountpoint."""
    if not os.path.exists("/dev/fuse"):
        raise MountFailed("FUSE is not available here: /dev/fuse is missing")
    mountpoint, log = workdir / "mnt", workdir / "nydusd.log"
    mountpoint.mkdir(parents=True, exist_ok=True)
    cmd = [nydusd, "--image", image, "--mountpoint", str(mountpoint),
           "--cache-dir", str(workdir / "cache"), "--platform", platform]  # fmt: skip
    if insecure:
        cmd.append("--insecure")
    with open(log, "wb") as out:
        process = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    try:
        _wait_mounted(process, mountpoint, log, timeout)
        yield mountpoint
    finally:
        _stop(process, mountpoint)


def _wait_mounted(
    process: subprocess.Popen[bytes], mountpoint: Path, log: Path, timeout: float
) -> None:
    deadline = time.monotonic() + timeout
    while not os.path.ismount(mountpoint):
        if process.poll() is not None:
            raise MountFailed(f"nydusd exited with status {process.returncode}: {_last_line(log)}")
        if time.monotonic() > deadline:
            raise MountFailed(f"nydusd did not mount {mountpoint} within {timeout:g}s")
        time.sleep(0.05)


def _last_line(log: Path) -> str:
    lines = log.read_text(errors="replace").strip().splitlines()
    return lines[-1] if lines else "(no output)"


def _stop(process: subprocess.Popen[bytes], mountpoint: Path) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
    if os.path.ismount(mountpoint):
        subprocess.run(["fusermount3", "-uz", str(mountpoint)], check=False, capture_output=True)
