"""The registry client against a real Distribution registry: references, manifests (OCI,
Docker, index with platform selection), blob reads (whole, ranged, streamed), pushes
(monolithic, chunked, mounted) and the errors a missing thing raises."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from rafs import RafsError
from rafs._registry import (
    DOCKER_MANIFEST,
    OCI_INDEX,
    OCI_MANIFEST,
    BadResponse,
    ImageReference,
    InvalidReference,
    NotFound,
    PlatformNotFound,
    RegistryError,
    base_url_for,
    sha256_digest,
)
from tests.fixtures import images
from tests.fixtures.registry import RegistryServer

from .helpers import push_image

# --- references (no I/O) ---------------------------------------------------------------

REFERENCES = [
    ("127.0.0.1:5000/app:v1", ("127.0.0.1:5000", "app", "v1", None), "v1"),
    ("localhost/team/app", ("localhost", "team/app", None, None), "latest"),
    ("reg.example.com/a/b/c:1.0-rc", ("reg.example.com", "a/b/c", "1.0-rc", None), "1.0-rc"),
    ("127.0.0.1:5000/app@sha256:" + "a" * 64, ("127.0.0.1:5000", "app", None, "sha256:" + "a" * 64),
     "sha256:" + "a" * 64),
    ("127.0.0.1:5000/app:v2@sha256:" + "b" * 64,
     ("127.0.0.1:5000", "app", "v2", "sha256:" + "b" * 64), "sha256:" + "b" * 64),
    ("busybox", ("docker.io", "library/busybox", None, None), "latest"),
    ("user/app:3", ("docker.io", "user/app", "3", None), "3"),
    ("http://127.0.0.1:80/x:y", ("127.0.0.1:80", "x", "y", None), "y"),
]  # fmt: skip


@pytest.mark.parametrize(("text", "parts", "ref"), REFERENCES)
def test_reference_parses(text: str, parts: tuple[str, ...], ref: str) -> None:
    parsed = ImageReference.parse(text)
    assert (parsed.registry, parsed.repository, parsed.tag, parsed.digest) == parts
    assert parsed.ref == ref


@pytest.mark.parametrize(
    "text", ["127.0.0.1:5000/UPPER:v1", "127.0.0.1:5000/app:bad tag", "h.io/app@sha256:xyz", ""]
)
def test_bad_reference_is_refused_with_the_value(text: str) -> None:
    with pytest.raises(InvalidReference) as info:
        ImageReference.parse(text)
    assert isinstance(info.value, RafsError)
    assert repr(text) in str(info.value) or text == ""


@pytest.mark.parametrize(
    ("registry", "insecure", "url"),
    [
        ("127.0.0.1:5000", False, "http://127.0.0.1:5000"),
        ("localhost:5000", False, "http://localhost:5000"),
        ("registry.example.com", False, "https://registry.example.com"),
        ("registry.example.com", True, "http://registry.example.com"),
        ("https://127.0.0.1:5000/", False, "https://127.0.0.1:5000"),
    ],
)
def test_scheme_is_plain_http_only_for_loopback_or_insecure(
    registry: str, insecure: bool, url: str
) -> None:
    assert base_url_for(registry, insecure) == url


# --- manifests -------------------------------------------------------------------------


async def test_oci_manifest_round_trip(registry: RegistryServer) -> None:
    async with registry.client() as client:
        layer = os.urandom(5000)
        digest = await push_image(client, "app/oci", "v1", [layer])
        by_tag = await client.get_manifest("app/oci", "v1")
        by_digest = await client.get_manifest("app/oci", digest)
    assert by_tag.media_type == OCI_MANIFEST
    assert by_tag.digest == by_digest.digest == digest == sha256_digest(by_tag.raw)
    assert [(d.digest, d.size) for d in by_tag.layers] == [(sha256_digest(layer), 5000)]
    assert by_tag.config is not None and by_tag.config.media_type.endswith("config.v1+json")


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "tree"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "motd").write_text("hello from a real image\n")
    return root


async def test_docker_v2_manifest_pushed_by_skopeo(
    registry: RegistryServer, tree: Path, tmp_path: Path
) -> None:
    layout = tmp_path / "layout"
    images.make_image(layout, "v1", tree)
    images.push(layout, "v1", registry.ref("app/docker", "v1"), docker_format=True)
    async with registry.client() as client:
        manifest = await client.get_manifest("app/docker", "v1")
        config = await client.get_blob("app/docker", manifest.config.digest)  # type: ignore[union-attr]
    assert manifest.media_type == DOCKER_MANIFEST
    assert len(manifest.layers) == 1
    assert json.loads(config)["architecture"] == "amd64"


async def test_index_resolves_to_the_platform_asked_for(
    registry: RegistryServer, tree: Path, tmp_path: Path
) -> None:
    layout = tmp_path / "layout"
    images.make_image(layout, "amd", tree, arch="amd64")
    (tree / "etc" / "arch").write_text("arm64\n")
    images.make_image(layout, "arm", tree, arch="arm64")
    index_digest = images.add_index(layout, "multi", {"amd": ("linux", "amd64"),
                                                      "arm": ("linux", "arm64")})  # fmt: skip
    images.push(layout, "multi", registry.ref("app/multi", "multi"), all_platforms=True)
    async with registry.client() as client:
        amd = await client.get_manifest("app/multi", "multi", platform="linux/amd64")
        arm = await client.get_manifest("app/multi", "multi", platform="linux/arm64")
        index = await client.get_manifest("app/multi", "multi", platform=None)
        with pytest.raises(PlatformNotFound) as info:
            await client.get_manifest("app/multi", "multi", platform="linux/s390x")
    assert amd.digest == images.manifest_digest(layout, "amd")
    assert arm.digest == images.manifest_digest(layout, "arm")
    assert amd.digest != arm.digest and not amd.is_index
    assert index.media_type == OCI_INDEX and index.digest == index_digest
    assert "linux/s390x" in str(info.value) and "linux/arm64" in str(info.value)


async def test_missing_manifest_and_blob_are_not_found(registry: RegistryServer) -> None:
    async with registry.client() as client:
        await push_image(client, "app/x", "v1", [b"layer"])
        with pytest.raises(NotFound) as info:
            await client.get_manifest("app/x", "nope")
        missing = "sha256:" + "0" * 64
        with pytest.raises(NotFound) as blob_info:
            await client.get_blob("app/x", missing, range=(0, 10))
        assert not await client.blob_exists("app/x", missing)
    assert info.value.status == 404 and info.value.repo == "app/x"
    assert info.value.code == "MANIFEST_UNKNOWN" and "nope" in str(info.value)
    assert blob_info.value.digest == missing and missing in str(blob_info.value)


# --- blobs -----------------------------------------------------------------------------


async def test_ranged_reads_return_exactly_the_range(registry: RegistryServer) -> None:
    data = os.urandom(200_000)
    async with registry.client() as client:
        digest = await client.push_blob("app/blobs", data)
        assert await client.head_blob("app/blobs", digest) == len(data)
        for offset, length in [(0, 1), (0, 200_000), (12_345, 50_000), (199_999, 1), (7, 0)]:
            got = await client.get_blob("app/blobs", digest, range=(offset, length))
            assert got == data[offset : offset + length], (offset, length)
        with pytest.raises(RegistryError) as info:
            await client.get_blob("app/blobs", digest, range=(300_000, 10))
    assert info.value.status == 416


async def test_stream_blob_yields_the_whole_blob(registry: RegistryServer) -> None:
    data = os.urandom(3 << 20)
    async with registry.client() as client:
        digest = await client.push_blob("app/big", data)
        pieces = [p async for p in client.stream_blob("app/big", digest, chunk_size=1 << 16)]
    assert b"".join(pieces) == data
    assert max(len(p) for p in pieces) <= 1 << 16


async def test_whole_blob_is_checked_against_its_digest(registry: RegistryServer) -> None:
    """The registry's storage is corrupted behind its back: the client notices."""
    data = b"original bytes " * 100
    async with registry.client() as client:
        digest = await client.push_blob("app/rot", data)
        hex_ = digest.split(":")[1]
        stored = (
            registry.root / "storage/docker/registry/v2/blobs/sha256" / hex_[:2] / hex_ / "data"
        )
        stored.write_bytes(b"X" + data[1:])
        with pytest.raises(BadResponse) as info:
            await client.get_blob("app/rot", digest)
    assert digest in str(info.value) and "hashes to" in str(info.value)


async def test_monolithic_and_chunked_pushes_read_back(
    registry: RegistryServer, tmp_path: Path
) -> None:
    small, big = os.urandom(10_000), os.urandom(1_000_003)
    big_file = tmp_path / "big.bin"
    big_file.write_bytes(big)
    async with registry.client(upload_chunk_size=256 << 10) as client:
        d_small = await client.push_blob("app/push", small)
        before = client.requests
        d_big = await client.push_blob("app/push", big_file)  # a path: read piecewise
        chunked_requests = client.requests - before
        again = client.requests
        assert await client.push_blob("app/push", big) == d_big  # already there: HEAD only
        assert client.requests - again == 1
        assert await client.get_blob("app/push", d_small) == small
        assert await client.get_blob("app/push", d_big) == big
    assert d_big == "sha256:" + hashlib.sha256(big).hexdigest()
    # HEAD + POST + 4 PATCHes (1 MB in 256 KiB pieces) + closing PUT
    assert chunked_requests == 1 + 1 + 4 + 1


async def test_mount_links_a_blob_across_repositories(registry: RegistryServer) -> None:
    data = os.urandom(4096)
    async with registry.client() as client:
        digest = await client.push_blob("team/source", data)
        assert await client.mount_blob("team/target", digest, "team/source")
        assert await client.get_blob("team/target", digest) == data
        assert not await client.mount_blob("team/other", "sha256:" + "1" * 64, "team/source")


async def test_a_closed_client_refuses_to_open_a_new_session() -> None:
    from rafs._registry import RegistryClient, RegistryError

    client = RegistryClient("127.0.0.1:9")
    await client.close()
    with pytest.raises(RegistryError, match="is closed"):
        await client.head_blob("repo", "sha256:" + "0" * 64)
