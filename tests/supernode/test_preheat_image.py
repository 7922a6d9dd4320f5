"""Preheat by image reference against a real Distribution registry on 127.0.0.1.

The registry (Debian `docker-registry`) runs from a config in a temp dir; the test pushes
two layers and an OCI manifest (and an index pointing at it) through the registry's HTTP
API, then asks the supernode to preheat the image: the job must resolve to exactly those
layers, with the registry's blob URLs as origins, and hand them to the seed.
"""

from __future__ import annotations

import asyncio
import hashlib
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import aiohttp
import msgspec
import pytest

from .conftest import ADMIN_AUTH, RunningSupernode
from .test_api import register

REGISTRY_BIN = shutil.which("docker-registry") or shutil.which("registry")
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
NYDUS_BLOB = "application/vnd.oci.image.layer.nydus.blob.v1"

pytestmark = pytest.mark.skipif(REGISTRY_BIN is None, reason="docker-registry not installed")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_for(port: int, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"registry exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("registry did not start")


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("registry")
    port = _free_port()
    config = root / "config.yml"
    config.write_text(
        "version: 0.1\n"
        f"storage:\n  filesystem:\n    rootdirectory: {root / 'data'}\n"
        f"http:\n  addr: 127.0.0.1:{port}\n"
        "log:\n  level: error\n"
    )
    proc = subprocess.Popen(
        [str(REGISTRY_BIN), "serve", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_for(port, proc)
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


async def _push_blob(http: aiohttp.ClientSession, base: str, data: bytes) -> dict[str, Any]:
    async with http.post(f"{base}/blobs/uploads/") as response:
        assert response.status == 202, await response.text()
        location = response.headers["Location"]
    sep = "&" if "?" in location else "?"
    url = location if location.startswith("http") else base.split("/v2/")[0] + location
    async with http.put(f"{url}{sep}digest={_digest(data)}", data=data) as response:
        assert response.status == 201, await response.text()
    return {"mediaType": NYDUS_BLOB, "digest": _digest(data), "size": len(data)}


async def _push_manifest(
    http: aiohttp.ClientSession, base: str, ref: str, kind: str, doc: dict[str, Any]
) -> dict[str, Any]:
    body = msgspec.json.encode(doc)
    headers = {"Content-Type": kind}
    async with http.put(f"{base}/manifests/{ref}", data=body, headers=headers) as response:
        assert response.status == 201, await response.text()
    return {"mediaType": kind, "digest": _digest(body), "size": len(body)}


async def _push_image(registry: str, http: aiohttp.ClientSession) -> list[str]:
    """Push app:1 (a manifest) and app:multi (an index over it); return layer digests."""
    base = f"http://{registry}/v2/app"
    layers = [await _push_blob(http, base, bytes([i]) * 4096) for i in (1, 2)]
    config = await _push_blob(http, base, b"{}")
    config["mediaType"] = "application/vnd.oci.image.config.v1+json"
    manifest = {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": config, "layers": layers}
    entry = await _push_manifest(http, base, "1", OCI_MANIFEST, manifest)
    index = {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [
            {**entry, "platform": {"os": "linux", "architecture": "arm64"}},
            {**entry, "platform": {"os": "linux", "architecture": "amd64"}},
        ],
    }
    await _push_manifest(http, base, "multi", OCI_INDEX, index)
    return [layer["digest"] for layer in layers]


async def _wait_job(node: RunningSupernode, job_id: str) -> dict[str, Any]:
    for _ in range(200):
        _, job = await node.get(f"/api/v1/admin/preheat/{job_id}", auth=ADMIN_AUTH)
        if job["state"] != "pending" or job["blobs_total"]:  # failed, or resolved
            return dict(job)
        await asyncio.sleep(0.02)
    raise AssertionError(f"job {job_id} was never resolved")


@pytest.mark.parametrize("tag", ["1", "multi"])
async def test_preheat_an_image_from_a_registry(
    registry: str, supernode: RunningSupernode, tag: str
) -> None:
    digests = await _push_image(registry, supernode.http)
    await register(supernode, "s1", seed=True)
    body = {"image": f"{registry}/app:{tag}"}
    status, job = await supernode.post("/api/v1/admin/preheat", body, auth=ADMIN_AUTH)
    assert (status, job["state"]) == (202, "pending")
    job = await _wait_job(supernode, job["job_id"])
    assert (job["state"], job["blobs_total"]) == ("pending", 2), job
    _, batch = await supernode.get("/api/v1/seed-tasks", peer_id="s1")
    _, job = await supernode.get(f"/api/v1/admin/preheat/{job['job_id']}", auth=ADMIN_AUTH)
    assert job["state"] == "running"
    tasks = sorted((t["blob_id"], t["origin_url"]) for t in batch["tasks"])
    assert tasks == sorted(
        (d.removeprefix("sha256:"), f"http://{registry}/v2/app/blobs/{d}") for d in digests
    )


async def test_a_missing_tag_fails_the_job(registry: str, supernode: RunningSupernode) -> None:
    status, job = await supernode.post(
        "/api/v1/admin/preheat", {"image": f"{registry}/app:nope"}, auth=ADMIN_AUTH
    )
    assert status == 202
    job = await _wait_job(supernode, job["job_id"])
    assert job["state"] == "failed" and "HTTP 404" in job["error"]


def test_references_parse() -> None:
    from supernode import parse_reference

    ref = parse_reference("127.0.0.1:5000/library/app:1.2")
    assert (ref.scheme, ref.registry, ref.repository, ref.reference) == (
        "http",
        "127.0.0.1:5000",
        "library/app",
        "1.2",
    )
    ref = parse_reference("registry.example.com/team/app@sha256:" + "0" * 64)
    assert (ref.scheme, ref.reference) == ("https", "sha256:" + "0" * 64)
    assert parse_reference("localhost:5000/app").reference == "latest"
    assert parse_reference("https://[::1]:5000/app:2").scheme == "https"
    assert parse_reference("[::1]:5000/app:2").scheme == "http"


def test_nydus_image_layers_name_their_bootstrap_for_seeds() -> None:
    from supernode._resolve import _layers, parse_reference

    blob, boot = "sha256:" + "a" * 64, "sha256:" + "b" * 64
    manifest = {
        "layers": [
            {
                "mediaType": "application/vnd.oci.image.layer.nydus.blob.v1",
                "digest": blob,
                "annotations": {"containerd.io/snapshot/nydus-blob": "true"},
            },
            {
                "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                "digest": boot,
                "annotations": {"containerd.io/snapshot/nydus-bootstrap": "true"},
            },
        ]
    }
    image = parse_reference("127.0.0.1:5000/app:nydus")
    (only,) = _layers(image, manifest)
    assert only.blob_id == "a" * 64
    assert only.origin_url.endswith(f"/v2/app/blobs/{blob}#nydus-bootstrap={boot}")
