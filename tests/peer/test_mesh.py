"""The mesh with real processes on loopback: a supernode, dfdaemon peers (each with its
own data dir and FUSE mount), seeds, a real registry as the origin, and a malicious peer.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from tests.fixtures.registry import RegistryServer, stop_registry

from .cluster import (
    ADMIN_TOKEN,
    Cluster,
    Image,
    Peer,
    build_and_push,
    http_get,
    sample_files,
    wait_for,
)
from .evil import EvilPeer

pytestmark = pytest.mark.timeout(90)

RANDOM_FILES = ["random-0", "random-1", "random-2", "random-3"]


def read_all(peer: Peer, image: Image, names: list[str] | None = None) -> None:
    assert peer.mountpoint is not None
    for name in names or sorted(image.files):
        assert (peer.mountpoint / name).read_bytes() == image.files[name], name


def test_chunks_only_peer_a_holds_reach_peer_b_with_the_origin_stopped(
    cluster: Cluster, registry: RegistryServer, image: Image
) -> None:
    cluster.start_supernode()
    a = cluster.start_peer("a", mount=image.reference, wait=False)
    b = cluster.start_peer("b", mount=image.reference, wait=False)
    cluster.wait_ready(a)
    cluster.wait_ready(b)
    read_all(a, image, ["random-0", "text-0"])
    assert a.metric("dfdaemon_origin_bytes_total") > 0
    a.wait_announced(image.blob_ids)
    stop_registry(registry)
    read_all(b, image, ["random-0", "text-0"])
    assert b.metric("dfdaemon_origin_bytes_total") == 0
    assert b.metric("dfdaemon_peer_bytes_in_total") > 0
    assert a.metric("dfdaemon_peer_bytes_out_total") == b.metric("dfdaemon_peer_bytes_in_total")
    assert b.stop(signal.SIGINT) == 0  # one mount: nydusd's Daemon unmounts on the signal
    assert b.mountpoint is not None and not os.path.ismount(b.mountpoint)


def test_peers_read_through_the_seed_and_the_origin_sends_each_chunk_once(
    cluster: Cluster, image: Image
) -> None:
    cluster.start_supernode()
    seed = cluster.start_peer("seed", "--seed", wait=False)
    a = cluster.start_peer("a", mount=image.reference, wait=False)
    b = cluster.start_peer("b", mount=image.reference, wait=False)
    for peer in (seed, a, b):
        cluster.wait_ready(peer)
    read_all(a, image)
    a.wait_announced(image.blob_ids)
    read_all(b, image)
    for peer in (a, b):
        assert peer.metric("dfdaemon_origin_bytes_total") == 0, peer.name
        assert peer.metric("dfdaemon_peer_bytes_in_total") > 0, peer.name
    blob_bytes = sum((image.blob_dir / blob_id).stat().st_size for blob_id in image.blob_ids)
    from_origin = seed.metric("dfdaemon_origin_bytes_total")
    assert 0 < from_origin <= blob_bytes  # every chunk left the origin once at most
    assert seed.metric("dfdaemon_seed_tasks_total") >= 1
    served = seed.metric("dfdaemon_peer_bytes_out_total") + a.metric(
        "dfdaemon_peer_bytes_out_total"
    )
    assert served == a.metric("dfdaemon_peer_bytes_in_total") + b.metric(
        "dfdaemon_peer_bytes_in_total"
    )


async def test_a_peer_serving_corrupted_chunks_is_reported_blacklisted_and_skipped(
    cluster: Cluster, image: Image
) -> None:
    sn = await asyncio.to_thread(cluster.start_supernode)
    evil = EvilPeer(image)
    await evil.start()
    try:
        await evil.join(sn.url)
        b = await asyncio.to_thread(cluster.start_peer, "b", mount=image.reference)
        await asyncio.to_thread(read_all, b, image, ["random-0"])
        assert evil.requests >= 1
        assert b.metric("dfdaemon_digest_mismatches_total") >= 1
        blacklist = await asyncio.to_thread(
            http_get, sn.url + "/api/v1/admin/blacklist", {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        )
        assert f'"peer_id":"evil","blob_id":"{image.blob_ids[0]}"' in blacklist.decode()
        asked = evil.requests
        await asyncio.to_thread(read_all, b, image)  # everything else: never the evil peer
        assert evil.requests == asked
    finally:
        await evil.stop()


def test_a_parent_killed_mid_transfer_and_the_others_still_complete(
    cluster: Cluster, image: Image
) -> None:
    cluster.start_supernode()
    a = cluster.start_peer("a", "--upload-limit", "1M", mount=image.reference)
    read_all(a, image)
    a.wait_announced(image.blob_ids)
    readers = [cluster.start_peer(name, mount=image.reference, wait=False) for name in "bc"]
    for peer in readers:
        cluster.wait_ready(peer)
    errors: list[BaseException] = []
    threads = [threading.Thread(target=_read_into, args=(p, image, errors)) for p in readers]
    for thread in threads:
        thread.start()
    wait_for("a to upload", lambda: a.metric("dfdaemon_peer_bytes_out_total") > 200_000, 20)
    a.stop(signal.SIGKILL)
    for thread in threads:
        thread.join(60)
    assert not errors, errors
    failures = sum(
        p.metric(f"dfdaemon_parent_failures_total{{kind={kind}}}")
        for p in readers
        for kind in ("connect", "timeout", "protocol")
    )
    assert failures >= 1  # the transfer really was cut


def _read_into(peer: Peer, image: Image, errors: list[BaseException]) -> None:
    try:
        read_all(peer, image, RANDOM_FILES)
    except BaseException as exc:  # handed to the test thread
        errors.append(exc)


def test_with_the_supernode_killed_peers_read_from_the_origin_and_register_again(
    cluster: Cluster, image: Image
) -> None:
    sn = cluster.start_supernode()
    a = cluster.start_peer("a", mount=image.reference)
    read_all(a, image, ["random-0"])
    a.wait_announced(image.blob_ids)
    port = int(sn.url.rsplit(":", 1)[1])
    sn.process.kill()
    sn.process.wait(10)
    started = time.monotonic()
    read_all(a, image, ["random-1", "random-2", "text-1"])
    assert time.monotonic() - started < 10
    assert a.metric("dfdaemon_supernode_registered") == 0
    assert a.metric("dfdaemon_supernode_lost_total") >= 1
    assert a.metric("dfdaemon_mesh_bypassed_chunks_total") > 0
    cluster.start_supernode(port)
    wait_for("a to register again", a.registered, 15)
    held = a.wait_announced(image.blob_ids)
    assert held > 0


def test_one_daemon_mounts_several_images_and_sigterm_unmounts_all_and_leaves(
    cluster: Cluster, registry: RegistryServer, image: Image, tmp_path: Path
) -> None:
    other = build_and_push(registry, tmp_path / "other", sample_files(seed=7), "mesh/other")
    sn = cluster.start_supernode()
    a = cluster.start_peer("a", mounts=(image.reference, other.reference))
    first, second = a.mountpoints
    assert (first / "random-1").read_bytes() == image.files["random-1"]
    assert (second / "random-1").read_bytes() == other.files["random-1"]
    assert sorted(p.name for p in second.iterdir()) == sorted(other.files)
    assert json.loads(http_get(sn.url + "/healthz"))["peers"] == 1
    assert a.stop(signal.SIGTERM) == 0
    assert not any(os.path.ismount(p) for p in [*a.mountpoints, a.data_dir / "fuse-root"])
    assert json.loads(http_get(sn.url + "/healthz"))["peers"] == 0
    assert "left the mesh as a" in a.log_text()


def test_an_image_that_is_not_there_is_one_error_line_and_exit_1(
    cluster: Cluster, registry: RegistryServer
) -> None:
    cluster.start_supernode()
    a = cluster.start_peer("a", mount=registry.ref("mesh/missing", "v1"), wait=False)
    assert a.process.wait(30) == 1
    errors = [line for line in a.log_text().splitlines() if line.startswith("dfdaemon: error:")]
    assert len(errors) == 1 and "mesh/missing" in errors[0]
    assert "Traceback" not in a.log_text()


def test_a_blob_evicted_from_a_peers_cache_is_withdrawn_so_nobody_asks_it_for_it(
    cluster: Cluster, registry: RegistryServer, image: Image, tmp_path: Path
) -> None:
    other = build_and_push(registry, tmp_path / "other", sample_files(seed=3), "mesh/other")
    cluster.start_supernode()
    a = cluster.start_peer("a", "--cache-size", "2M", mounts=(image.reference, other.reference))
    first, second = a.mountpoints
    for name in RANDOM_FILES:
        assert (first / name).read_bytes() == image.files[name]
    a.wait_announced(image.blob_ids)
    for name in RANDOM_FILES:  # a second image through the 2 MiB cache evicts the first
        assert (second / name).read_bytes() == other.files[name]
    wait_for("a to evict and withdraw the first image", lambda: a.held(image.blob_ids) == 0)
    wait_for("the withdrawal", lambda: "withdrew" in a.log_text(), 10)
    b = cluster.start_peer("b", mount=image.reference)
    read_all(b, image, RANDOM_FILES)
    failures = sum(
        v for k, v in b.metrics().items() if k.startswith("dfdaemon_parent_failures_total")
    )
    assert failures == 0  # never sent to a for chunks it no longer has
    assert b.metric("dfdaemon_peer_bytes_in_total") == 0
    assert b.metric("dfdaemon_origin_bytes_total") > 0
