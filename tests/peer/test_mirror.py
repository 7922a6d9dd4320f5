"""`dfdaemon --mirror` with a real client: `skopeo copy` through a `registries.conf` mirror
entry gives the same image digests as a direct pull from the real registry, and a second
peer's mirror takes the blobs from the first peer (no blob byte from the origin).
"""

from __future__ import annotations

import json
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures.images import make_image, push, require_tools
from tests.fixtures.registry import RegistryServer

from .cluster import Cluster, Peer, free_port, wait_for
from .test_dfget import daemon, dfget, sha256


@pytest.fixture
def mesh(tmp_path: Path) -> Iterator[Cluster]:
    found = Cluster(tmp_path / "cluster")
    found.base.mkdir()
    try:
        found.start_supernode()
        yield found
    finally:
        found.close()


@pytest.fixture
def pushed(registry: RegistryServer, tmp_path: Path) -> str:
    """An OCI image of two files (one of several pieces) in the registry: its reference."""
    require_tools("umoci", "skopeo")
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "big.bin").write_bytes(bytes(range(256)) * 40_000 + b"tail")  # gzip: small layer
    import random

    (tree / "random.bin").write_bytes(random.Random(3).randbytes(5_000_000))
    layout = tmp_path / "layout"
    make_image(layout, "v1", tree)
    push(layout, "v1", registry.ref("mesh/oci", "v1"))
    return registry.ref("mesh/oci", "v1")


def skopeo_copy(reference: str, dest: Path, conf: Path | None = None) -> None:
    args = ["skopeo", "--insecure-policy"]
    if conf is not None:
        args += ["--registries-conf", str(conf)]
    args += ["copy", "-q", "--src-tls-verify=false", f"docker://{reference}", f"oci:{dest}:v1"]
    done = subprocess.run(args, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def registries_conf(path: Path, registry: RegistryServer, mirror_port: int) -> Path:
    path.write_text(f"""
[[registry]]
prefix = "{registry.host}"
location = "{registry.host}"
insecure = true

[[registry.mirror]]
location = "127.0.0.1:{mirror_port}"
insecure = true
""")
    return path


def digests(layout: Path) -> tuple[str, list[str]]:
    """The manifest digest and every blob digest (config and layers) of `layout`'s image."""
    index = json.loads((layout / "index.json").read_text())
    manifest_digest = index["manifests"][0]["digest"]
    manifest = json.loads((layout / "blobs" / "sha256" / manifest_digest[7:]).read_bytes())
    blobs = [manifest["config"]["digest"]] + [layer["digest"] for layer in manifest["layers"]]
    for digest in blobs:
        assert (layout / "blobs" / "sha256" / digest[7:]).exists()
    return manifest_digest, blobs


def start_mirror_peer(mesh: Cluster, name: str, registry: RegistryServer) -> tuple[Peer, int]:
    port = free_port()
    peer = mesh.start_peer(name, "--mirror", f"127.0.0.1:{port}", "--mirror-upstream",
                           registry.url)  # fmt: skip
    return peer, port


def test_skopeo_through_mirrors_of_two_peers(
    mesh: Cluster, registry: RegistryServer, pushed: str, tmp_path: Path
) -> None:
    a, port_a = start_mirror_peer(mesh, "a", registry)
    b, port_b = start_mirror_peer(mesh, "b", registry)

    skopeo_copy(pushed, tmp_path / "direct")
    expected = digests(tmp_path / "direct")

    skopeo_copy(pushed, tmp_path / "via-a", registries_conf(tmp_path / "a.conf", registry, port_a))
    assert digests(tmp_path / "via-a") == expected
    sizes = sum((tmp_path / "direct/blobs/sha256" / d[7:]).stat().st_size for d in expected[1])
    assert a.metric("dfdaemon_download_bytes_out_total") == sizes  # the mirror served them
    assert a.metric("dfdaemon_origin_bytes_total") == sizes

    tables = len(expected[1])
    wait_for("peer a to announce its blobs' tables",
             lambda: a.metric("dfdaemon_announced_chunks") >= 2 * tables)  # fmt: skip
    skopeo_copy(pushed, tmp_path / "via-b", registries_conf(tmp_path / "b.conf", registry, port_b))
    assert digests(tmp_path / "via-b") == expected
    assert b.metric("dfdaemon_download_bytes_out_total") == sizes
    assert b.metric("dfdaemon_origin_bytes_total") == 0
    assert b.metric("dfdaemon_peer_bytes_in_total") == sizes


def test_mirror_api_edges(mesh: Cluster, registry: RegistryServer, pushed: str) -> None:
    port = free_port()
    mesh.start_peer("a", "--mirror", f"127.0.0.1:{port}")  # no default: ns= names the registry
    base, ns = f"http://127.0.0.1:{port}", f"?ns={registry.host}"
    status, manifest = _get(f"{base}/v2/mesh/oci/manifests/v1{ns}",
                            {"Accept": "application/vnd.oci.image.manifest.v1+json"})  # fmt: skip
    assert status == 200
    layer = json.loads(manifest)["layers"][0]
    blob_url = f"{base}/v2/mesh/oci/blobs/{layer['digest']}{ns}"

    status, headers = _head(blob_url)  # not held yet: the upstream answers
    assert status == 200 and int(headers["Content-Length"]) == layer["size"]
    status, body = _get(blob_url)
    assert status == 200 and len(body) == layer["size"]
    assert _get(blob_url, {"Range": "bytes=10-"}) == (206, body[10:])  # a resumed pull
    assert _get(blob_url, {"Range": "bytes=5-9"}) == (206, body[5:10])
    status, headers = _head(blob_url)  # held: from the piece table
    assert status == 200 and headers["Docker-Content-Digest"] == layer["digest"]
    assert int(headers["Content-Length"]) == layer["size"]

    status, body = _get(f"{base}/v2/mesh/oci/blobs/sha256:{'1' * 64}{ns}")
    assert status == 404 and json.loads(body)["errors"][0]["code"] == "BLOB_UNKNOWN"
    assert _get(f"{base}/v2/mesh/oci/manifests/nope{ns}")[0] == 404
    assert _get(f"{base}/v2/mesh/oci/manifests/v1")[0] == 400  # no ns= and no default


def _get(url: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {})) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _head(url: str) -> tuple[int, dict[str, str]]:
    request = urllib.request.Request(url, method="HEAD")
    with urllib.request.urlopen(request) as response:
        return response.status, dict(response.headers)


def test_dfget_of_a_registry_blob_is_shared_with_the_mirror(
    mesh: Cluster, registry: RegistryServer, pushed: str, tmp_path: Path
) -> None:
    a, port = start_mirror_peer(mesh, "a", registry)
    accept = {"Accept": "application/vnd.oci.image.manifest.v1+json"}
    manifest = json.loads(_get(f"{registry.url}/v2/mesh/oci/manifests/v1", accept)[1])
    layer = manifest["layers"][0]
    blob_url = f"{registry.url}/v2/mesh/oci/blobs/{layer['digest']}"
    out = tmp_path / "layer"
    done = dfget(blob_url, "-O", str(out), "--daemon", daemon(a))  # the digest is implied
    assert done.returncode == 0, done.stderr
    assert sha256(out.read_bytes()) == layer["digest"]
    other = "sha256:" + "0" * 64
    assert dfget(blob_url, "-O", str(tmp_path / "x"), "--digest", other).returncode == 2

    from_origin = a.metric("dfdaemon_origin_bytes_total")
    assert from_origin == layer["size"]
    status, body = _get(f"http://127.0.0.1:{port}/v2/mesh/oci/blobs/{layer['digest']}")
    assert status == 200 and body == out.read_bytes()
    assert a.metric("dfdaemon_origin_bytes_total") == from_origin  # one file of the mesh
