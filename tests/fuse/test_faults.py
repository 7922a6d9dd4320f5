"""Faults under a live mount: a corrupted cache is repaired, a corrupted origin is refused."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from .conftest import Mounter, build_image


def corrupt_byte(path: Path, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        old = f.read(1)
        f.seek(offset)
        f.write(bytes([old[0] ^ 0xFF]))


def make_image(tmp_path: Path) -> tuple[Path, Path, Path, bytes]:
    src = tmp_path / "src"
    src.mkdir()
    data = os.urandom(64 * 1024) * 3  # compressible: the chunk is stored zstd-compressed
    (src / "f").write_bytes(data)
    boot, blobs = build_image(src, tmp_path, "--chunk-size", "0x40000")
    return src, boot, blobs, data


def test_corrupted_cache_is_detected_and_repaired_with_validate(
    tmp_path: Path, mounter: Mounter
) -> None:
    _, boot, blobs, data = make_image(tmp_path)
    cache = tmp_path / "cache"
    m = mounter.mount("-B", str(boot), "-D", str(blobs), "--cache-dir", str(cache), name="m1")
    assert (m.mountpoint / "f").read_bytes() == data
    m.stop()
    (cached,) = cache.glob("*.blob.data")
    corrupt_byte(cached, 10)
    m2 = mounter.mount(
        "-B", str(boot), "-D", str(blobs), "--cache-dir", str(cache), "--validate", name="m2"
    )
    assert (m2.mountpoint / "f").read_bytes() == data
    m2.stop()
    assert "mismatch" in m2.log_text() or "discard" in m2.log_text().lower()
    # the repaired copy is good again: a third mount reads it from the cache alone
    for blob in blobs.iterdir():
        blob.unlink()
    m3 = mounter.mount(
        "-B", str(boot), "-D", str(blobs), "--cache-dir", str(cache), "--validate", name="m3"
    )
    assert (m3.mountpoint / "f").read_bytes() == data


def test_corrupted_origin_gives_eio_never_wrong_bytes(tmp_path: Path, mounter: Mounter) -> None:
    _, boot, blobs, _ = make_image(tmp_path)
    (blob,) = blobs.iterdir()
    corrupt_byte(blob, 20)
    m = mounter.mount("-B", str(boot), "-D", str(blobs), "--cache-dir", str(tmp_path / "c"))
    with pytest.raises(OSError) as info:
        (m.mountpoint / "f").read_bytes()
    assert info.value.errno == errno.EIO
    m.stop()
    log = m.log_text()
    assert "chunk digest mismatch" in log and blob.name in log
    assert "expected" in log and "actual" in log
