"""`dfdaemon --mount` prefetches the files the image's bootstrap names in its prefetch
table, through its cache and the mesh, before anything reads them (as `nydusd` does)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
import urllib.error
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from rafs._load import load_bootstrap
from tests.fixtures.registry import RegistryServer

from .cluster import BIN, Cluster, Image, Peer, _push, sample_files, wait_for

TABLE = ("/random-1", "/text-0")


def _image_with_table(registry: RegistryServer, work: Path) -> Image:
    """`sample_files` built with a prefetch table naming TABLE, pushed as a Nydus image."""
    files = sample_files()
    src = work / "src"
    src.mkdir(parents=True)
    for name, data in files.items():
        (src / name).write_bytes(data)
    (work / "table.txt").write_text("\n".join(TABLE))
    boot, blobs = work / "image.boot", work / "blobs"
    subprocess.run([str(BIN / "nydus-image"), "create", "-B", str(boot), "-D", str(blobs),
                    "--chunk-size", "0x40000", "--prefetch-files", str(work / "table.txt"),
                    str(src)], check=True, capture_output=True)  # fmt: skip
    blob_ids = sorted(p.name for p in blobs.iterdir())
    asyncio.run(_push(registry, "mesh/hot", boot.read_bytes(), blobs, blob_ids))
    return Image(registry.ref("mesh/hot", "v1"), files, blob_ids, boot, blobs)


def _held(peer: Peer, blob_ids: list[str]) -> int:
    try:
        return peer.held(blob_ids)
    except urllib.error.HTTPError:  # nothing of the blob cached yet
        return 0


def _mount_api(peer: Peer, path: str) -> str:
    sock = peer.data_dir / "mounts" / "0.sock"
    out = subprocess.run(["curl", "-sf", "--unix-socket", str(sock), f"http://x{path}"],
                         capture_output=True, text=True, check=True)  # fmt: skip
    return out.stdout


def _reads(peer: Peer) -> float:
    text = _mount_api(peer, "/api/v1/metrics")
    samples = [s for f in text_string_to_metric_families(text) for s in f.samples]
    return next(s.value for s in samples if s.name == "nydusd_reads_total")


def test_the_mount_prefetches_the_bootstrap_table_before_any_read(
    cluster: Cluster, registry: RegistryServer, tmp_path: Path
) -> None:
    image = _image_with_table(registry, tmp_path / "image")
    boot = load_bootstrap(image.bootstrap)
    assert boot.prefetch == [boot.lookup(p).ino for p in TABLE]
    wanted = {(c.blob_index, c.index) for p in TABLE for c in boot.lookup(p).chunks}
    cluster.start_supernode()
    a = cluster.start_peer("a", mount=image.reference)

    def prefetched() -> bool:
        state = json.loads(_mount_api(a, "/api/v1/daemon"))["prefetch"]
        return bool(state["finished"]) and state["done_chunks"] == len(wanted)

    wait_for("the mount's prefetch", prefetched)
    wait_for("the prefetched chunks in the cache", lambda: _held(a, image.blob_ids) == len(wanted))
    time.sleep(0.3)
    assert _held(a, image.blob_ids) == len(wanted)  # and nothing more
    assert _reads(a) == 0
    assert len(wanted) < sum(b.chunk_count for b in boot.blobs)  # not everything: the table
    assert a.mountpoint is not None
    for name in ("random-1", "text-0", "random-2"):
        assert (a.mountpoint / name).read_bytes() == image.files[name]


def test_with_no_prefetch_the_mount_fetches_only_what_is_read(
    cluster: Cluster, registry: RegistryServer, tmp_path: Path
) -> None:
    image = _image_with_table(registry, tmp_path / "image")
    cluster.start_supernode()
    a = cluster.start_peer("a", "--no-prefetch", mount=image.reference)
    time.sleep(0.5)  # time enough for the table's chunks to arrive, were they asked for
    assert _held(a, image.blob_ids) == 0
    assert a.mountpoint is not None
    assert (a.mountpoint / "random-2").read_bytes() == image.files["random-2"]
    read = len(load_bootstrap(image.bootstrap).lookup("/random-2").chunks)
    wait_for("the read chunks in the cache", lambda: _held(a, image.blob_ids) >= read)
    time.sleep(0.3)
    assert _held(a, image.blob_ids) == read  # and none of the table's
