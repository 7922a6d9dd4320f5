"""nydusd fetches the files named by the bootstrap's prefetch table before anything reads
them (the chunks land in the verified cache, the origin is asked, no read happens), unless
`--no-prefetch`; `--prefetch-files` and `--prefetch-all` take the place of the table."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from rafs import Bootstrap
from rafs._cache import BlobCache
from rafs._load import load_bootstrap
from rafs._v5write import dump_v5

from .conftest import Mounter, build_image
from .test_mount import wait_prefetched

CHUNK = 0x10000
FILES = {"hot/a": 200_000, "hot/sub/b": 100_000, "single": 70_000}
FILES |= {f"cold-{n}": 150_000 for n in range(3)}
TABLE = "/hot\n/single\n"


def _image(tmp_path: Path) -> tuple[Path, Path]:
    src = tmp_path / "src"
    for name, size in FILES.items():
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        (src / name).write_bytes(os.urandom(size))  # random: no two chunks alike
    table = tmp_path / "table.txt"
    table.write_text(TABLE)
    return build_image(src, tmp_path, "--chunk-size", hex(CHUNK), "--prefetch-files", str(table))


def _chunks_below(boot: Bootstrap, *roots: str) -> set[tuple[str, int]]:
    """(blob id, chunk index) of every file at or below one of `roots`."""
    found = set()
    for path, inode in boot.walk():
        name = path.decode()
        if inode.is_reg and any(name == r or name.startswith(r.rstrip("/") + "/") for r in roots):
            found |= {(boot.blob_id(c), c.index) for c in inode.chunks}
    return found


def _cached(cache_dir: Path, boot: Bootstrap) -> set[tuple[str, int]]:
    """(blob id, chunk index) of every chunk the cache's bitmaps say is present."""
    found = set()
    with BlobCache(cache_dir) as cache:
        for blob in boot.blobs:
            bits = int.from_bytes(cache.present_indices(blob.blob_id), "little")
            found |= {(blob.blob_id, i) for i in range(bits.bit_length()) if bits >> i & 1}
    return found


def _settled_cache(cache_dir: Path, boot: Bootstrap, expected: set[tuple[str, int]]) -> bool:
    """The cache came to hold exactly `expected` (fetched chunks are stored in the
    background, so a little after the fetch), and stayed so for a moment."""
    deadline = time.monotonic() + 10
    while _cached(cache_dir, boot) != expected and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.2)
    return _cached(cache_dir, boot) == expected


def _api(apisock: Path, path: str) -> str:
    out = subprocess.run(["curl", "-sf", "--unix-socket", str(apisock), f"http://x{path}"],
                         capture_output=True, text=True, check=True)  # fmt: skip
    return out.stdout


def _metric(apisock: Path, name: str) -> float:
    for family in text_string_to_metric_families(_api(apisock, "/api/v1/metrics")):
        for sample in family.samples:
            if sample.name == name:
                return float(sample.value)
    raise AssertionError(f"no metric {name}")


@pytest.mark.parametrize(
    ("flags", "fetched"),
    [
        ((), ("/hot", "/single")),  # the bootstrap's own table
        (("--prefetch-files", "cold.txt"), ("/cold-1",)),  # the user's list instead
        (("--prefetch-all",), ("/",)),
    ],
    ids=["table", "prefetch-files", "prefetch-all"],
)
def test_prefetch_fetches_before_any_read(
    tmp_path: Path, mounter: Mounter, flags: tuple[str, ...], fetched: tuple[str, ...]
) -> None:
    boot_path, blobs = _image(tmp_path)
    boot = load_bootstrap(boot_path)
    assert boot.prefetch == [boot.lookup("/hot").ino, boot.lookup("/single").ino]
    (tmp_path / "cold.txt").write_text("/cold-1\n")
    cache = tmp_path / "cache"
    argv = [str(tmp_path / f) if f.endswith(".txt") else f for f in flags]
    m = mounter.mount("-B", str(boot_path), "-D", str(blobs), "--cache-dir", str(cache), *argv)
    wait_prefetched(m.apisock)
    wanted = _chunks_below(boot, *fetched)
    assert wanted and _settled_cache(cache, boot, wanted)
    assert _metric(m.apisock, "nydusd_reads_total") == 0
    assert _metric(m.apisock, "nydusd_origin_chunks_verified_total") == len(wanted)
    state = json.loads(_api(m.apisock, "/api/v1/daemon"))["prefetch"]
    assert (state["total_chunks"], state["done_chunks"]) == (len(wanted), len(wanted))


def test_no_prefetch_fetches_only_what_is_read(tmp_path: Path, mounter: Mounter) -> None:
    boot_path, blobs = _image(tmp_path)
    boot = load_bootstrap(boot_path)
    cache = tmp_path / "cache"
    m = mounter.mount(
        "-B", str(boot_path), "-D", str(blobs), "--cache-dir", str(cache), "--no-prefetch"
    )
    time.sleep(1.0)  # a prefetch would have started at once and fetched these in far less
    assert _cached(cache, boot) == set()
    assert _metric(m.apisock, "nydusd_origin_chunks_verified_total") == 0
    assert json.loads(_api(m.apisock, "/api/v1/daemon"))["prefetch"]["total_chunks"] == 0
    (m.mountpoint / "cold-2").read_bytes()
    assert _settled_cache(cache, boot, _chunks_below(boot, "/cold-2"))


def test_a_table_naming_no_inode_is_one_error_line(tmp_path: Path, mounter: Mounter) -> None:
    boot_path, blobs = _image(tmp_path)
    boot = load_bootstrap(boot_path)
    boot.prefetch = [boot.lookup("/single").ino, 9999]
    bad = tmp_path / "bad.boot"
    bad.write_bytes(dump_v5(boot))
    m = mounter.mount("-B", str(bad), "-D", str(blobs), wait=False)
    assert m.process.wait(timeout=20) == 1
    assert m.log_text().strip().splitlines() == [
        "nydusd: error: corrupt bootstrap: prefetch table ino = 9999"
    ]
    assert not os.path.ismount(m.mountpoint)
