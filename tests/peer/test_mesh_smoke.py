"""Chunks only peer A holds reach peer B with the origin stopped."""

from __future__ import annotations

from tests.fixtures.registry import RegistryServer, stop_registry

from .cluster import Cluster, Image


def test_chunks_only_peer_a_holds_reach_peer_b_with_the_origin_stopped(
    cluster: Cluster, registry: RegistryServer, image: Image
) -> None:
    cluster.start_supernode()
    a = cluster.start_peer("a", mount=image.reference)
    b = cluster.start_peer("b", mount=image.reference)
    assert a.mountpoint is not None and b.mountpoint is not None
    for name in ("random-0", "text-0"):
        assert (a.mountpoint / name).read_bytes() == image.files[name]
    assert a.metric("dfdaemon_origin_bytes_total") > 0
    stop_registry(registry)
    for name in ("random-0", "text-0"):
        assert (b.mountpoint / name).read_bytes() == image.files[name]
    assert b.metric("dfdaemon_origin_bytes_total") == 0
    assert b.metric("dfdaemon_peer_bytes_in_total") > 0
    assert a.metric("dfdaemon_peer_bytes_out_total") == b.metric("dfdaemon_peer_bytes_in_total")
