"""The mesh over libp2p with real processes on loopback: dfdaemon peers that serve chunks
over both transports and prefer libp2p, a supernode, a real registry as the origin."""

from __future__ import annotations

import re
import signal
from pathlib import Path

import pytest

from peer.cli import main
from tests.fixtures.registry import RegistryServer, stop_registry

from .cluster import Cluster, Image, Peer, free_port

pytestmark = pytest.mark.timeout(90)

P2P = ["--p2p-listen", "/ip4/127.0.0.1/tcp/0", "--transport", "libp2p"]
NAMES = ["random-0", "random-2", "text-0"]


def read_all(peer: Peer, image: Image) -> None:
    assert peer.mountpoint is not None
    for name in NAMES:
        assert (peer.mountpoint / name).read_bytes() == image.files[name], name


def test_peer_b_fetches_chunks_only_a_holds_over_libp2p_with_the_origin_stopped(
    cluster: Cluster, registry: RegistryServer, image: Image
) -> None:
    cluster.start_supernode()
    a = cluster.start_peer("a", *P2P, mount=image.reference, wait=False)
    b = cluster.start_peer("b", *P2P, mount=image.reference, wait=False)
    cluster.wait_ready(a)
    cluster.wait_ready(b)
    read_all(a, image)
    assert a.metric("dfdaemon_origin_bytes_total") > 0
    a.wait_announced(image.blob_ids)
    stop_registry(registry)
    read_all(b, image)  # every chunk verified against its digest by b's mesh fetcher
    assert b.metric("dfdaemon_origin_bytes_total") == 0
    received = b.metric("dfdaemon_peer_bytes_in_total")
    assert received > 0
    assert b.metric("dfdaemon_libp2p_frame_bytes_in_total") == received  # none over HTTP
    assert a.metric("dfdaemon_libp2p_bytes_out_total") == received
    assert a.metric("dfdaemon_peer_bytes_out_total") == received
    assert b.stop(signal.SIGTERM) == 0
    assert a.stop(signal.SIGTERM) == 0  # the trio thread stops with the daemon
    assert "libp2p" in a.log_text() and "Traceback" not in a.log_text()


def test_the_peer_id_in_the_multiaddr_survives_a_restart(cluster: Cluster) -> None:
    cluster.start_supernode()
    first = cluster.start_peer("a", *P2P)
    first_id = _libp2p_ids(first)[-1]
    assert first.stop() == 0
    again = cluster.start_peer("a", *P2P)  # appends to the same log
    assert _libp2p_ids(again) == [first_id, first_id]
    assert (first.data_dir / "p2p_key").stat().st_mode & 0o777 == 0o600


def _libp2p_ids(peer: Peer) -> list[str]:
    """The libp2p peer id of every start the peer's log tells of."""
    found = re.findall(r"listening on /ip4/127\.0\.0\.1/tcp/\d+/p2p/(\w+)", peer.log_text())
    assert found, peer.log_text()
    return found


def test_a_taken_libp2p_port_is_one_error_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        argv = ["--supernode", "http://127.0.0.1:1", "--data-dir", str(tmp_path), "--listen",
                f"127.0.0.1:{free_port()}", "--p2p-listen", f"/ip4/127.0.0.1/tcp/{port}",
                "--log-level", "error"]  # fmt: skip
        assert main(argv) == 1
    last = capsys.readouterr().err.strip().splitlines()[-1]  # after libp2p's own log line
    assert last.startswith("dfdaemon: error: libp2p cannot listen on ")
    assert "no listener started" in last


def test_a_bad_multiaddr_is_one_error_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--supernode", "http://127.0.0.1:1", "--data-dir", str(tmp_path),
            "--p2p-listen", "/ip4/127.0.0.1/tcpp/1"]  # fmt: skip
    assert main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("dfdaemon: error: --p2p-listen") and "\n" not in err
